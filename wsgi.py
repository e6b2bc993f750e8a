"""The WSGI entry point: `gunicorn wsgi:app` and `flask --app wsgi ...` load the app from here.

A configuration error ends the process with its one-line message and exit status 1, not a
traceback.
"""

import sys

from service import create_app
from service.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    sys.exit(f"configuration error: {error}")
