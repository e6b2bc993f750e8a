"""Who may see operational detail: error text, database names, the verification endpoint.

Outside production everything is open. In production the caller must present
`Authorization: Bearer <OPS_TOKEN>`, compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import abort, current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from service.config import Settings


def is_ops_caller(authorization: str | None, settings: Settings) -> bool:
    """True when a request with this Authorization header may see operational detail."""
    if not settings.is_production:
        return True
    if settings.ops_token is None:
        return False
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), settings.ops_token.encode())


def ops_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """Restrict a view to ops callers; in production without OPS_TOKEN the view does not exist."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        settings: Settings = current_app.config["SETTINGS"]
        if settings.is_production and settings.ops_token is None:
            abort(404)
        if not is_ops_caller(request.headers.get("Authorization"), settings):
            raise Unauthorized(www_authenticate=WWWAuthenticate("Bearer"))
        return view(*args, **kwargs)

    return guarded
