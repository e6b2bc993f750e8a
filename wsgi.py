"""The WSGI entry point: `gunicorn wsgi:app` and `flask --app wsgi ...` load the app from here.

The app is built from the process's settings (under gunicorn: the master's, inherited by fork).
A configuration error ends the process with its one-line message and exit status 1, not a
traceback.
"""

import sys

from service import create_app
from service.config import ConfigError, process_settings

try:
    app = create_app(settings=process_settings())
except ConfigError as error:
    sys.exit(f"configuration error: {error}")
