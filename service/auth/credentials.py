"""Better Auth's credentials as a request presents them: the signed cookie, a bearer, a JWT.

Only parsing and signature checks live here (no I/O): what Better Auth 1.7 and better-call do,
summarised in docs/auth.md. Nothing here ever puts a credential's value in an error or a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from werkzeug.datastructures import Headers
from werkzeug.sansio.http import parse_cookie

from service.config import Settings

# Better Auth's tokens are 32 letters and digits; up to 255 visible ASCII characters are
# accepted, nothing else (it keeps NUL and other bytes PostgreSQL's text refuses out of a query).
SESSION_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")

Kind = Literal["cookie", "bearer", "jwt"]


class Refused(Exception):
    """The credential presented is not acceptable; the message names why, never the value."""


@dataclass(frozen=True)
class Credential:
    """What the caller presented: a session token (cookie, bearer) or a JWT, still unverified
    against the database or the keys."""

    kind: Kind
    value: str


def unsign(signed: str, secret: str) -> str:
    """The session token of `token.base64(HMAC-SHA256(secret, token))`, as better-call signs it.

    Percent-decoded only when it holds a `%` (a `+` stays a `+`), split at the last dot, the
    signature compared in constant time. better-call's shape rules (a dot, not first; 44
    characters ending in `=`) need no code of their own: only such a signature decodes strictly
    to the 32 bytes of an HMAC-SHA256, and an empty token fails SESSION_TOKEN. Raises Refused.
    """
    if "%" in signed:
        try:
            signed = unquote(signed, errors="strict")
        except UnicodeDecodeError:
            raise Refused("signed value is not valid percent-encoded UTF-8") from None
    token, _, signature = signed.rpartition(".")
    if not SESSION_TOKEN.fullmatch(token):
        raise Refused("no session token before a dot, or one with characters a token never has")
    try:
        mac = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("signature is not base64") from None
    expected = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise Refused("signature does not verify with the current secret")
    return token


def presented(headers: Headers, settings: Settings) -> Credential:
    """The credential of a request, chosen as Better Auth chooses it.

    A Bearer that is a JWT, or a signed token whose signature verifies, is the credential; any
    other Authorization is passed over for the session cookie, as the bearer plugin does. Raises
    Refused when nothing acceptable is left.
    """
    authorization = headers.get("Authorization")
    bearer_refused: Refused | None = None
    if authorization is not None:
        try:
            return _bearer(authorization, settings)
        except Refused as refusal:
            bearer_refused = refusal
    # The first cookie of that name wins, as in better-call (werkzeug does not percent-decode).
    # The header as WSGI gives it (latin-1): werkzeug.http's parse_cookie would decode it as
    # UTF-8 and raise on other bytes; a token with such characters is refused below anyway.
    cookie = parse_cookie(headers.get("Cookie", "")).get(settings.better_auth_cookie_name)
    if cookie is None:
        raise bearer_refused or Refused("no session cookie and no Authorization header")
    return Credential("cookie", unsign(cookie, settings.better_auth_signing_secret))


def _bearer(authorization: str, settings: Settings) -> Credential:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise Refused("Authorization is not a Bearer credential")
    value = value.strip()
    if value.count(".") == 2:  # header.payload.signature; a signed token has one dot
        return Credential("jwt", value)
    if "." in value:
        return Credential("bearer", unsign(value, settings.better_auth_signing_secret))
    if settings.better_auth_allow_unsigned_bearer and SESSION_TOKEN.fullmatch(value):
        return Credential("bearer", value)
    raise Refused("bearer is neither signed nor a JWT (unsigned ones are not allowed)")
