"""JWTs of Better Auth's jwt plugin, verified with the public keys of the `jwks` table.

The keys are read once and again only for a `kid` not seen yet, at most once per
`refetch_interval_s`, so a flood of forged kids costs one query per interval, not one per request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import or_, select
from sqlalchemy.orm import Session as DatabaseSession

from service.auth.caller import Caller, CallerUser
from service.auth.credentials import Refused
from service.models import Jwks

log = logging.getLogger(__name__)

GRACE_PERIOD = timedelta(days=30)  # the plugin's jwks.gracePeriod: expired keys still verify
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


class KeySet:
    """The public keys by kid, refetched on an unknown kid at most once per interval."""

    def __init__(
        self,
        refetch_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refetch_interval_s = refetch_interval_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()  # gevent's once patched: concurrent misses fetch once
        self.fetches = 0

    def key(self, kid: str, database: DatabaseSession) -> jwt.PyJWK | None:
        """The key of `kid`, reading the table again if it is unknown and the interval allows."""
        if kid in self._keys:
            return self._keys[kid]
        with self._lock:  # a miss that waited here finds the kid the fetch before it brought
            if kid not in self._keys and self._may_fetch():
                self._keys = _read_keys(database)  # an outage raises: not a fetch, try again
                self._fetched_at = self._clock()
                self.fetches += 1
        return self._keys.get(kid)

    def _may_fetch(self) -> bool:
        fetched_at = self._fetched_at
        return fetched_at is None or self._clock() - fetched_at >= self.refetch_interval_s


def _read_keys(database: DatabaseSession) -> dict[str, jwt.PyJWK]:
    live = or_(Jwks.expires_at.is_(None), Jwks.expires_at > datetime.now(UTC) - GRACE_PERIOD)
    rows = database.execute(select(Jwks.id, Jwks.public_key, Jwks.alg).where(live)).all()
    keys = {}
    for kid, public_key, alg in rows:
        try:
            # Without an alg, PyJWK takes the key type's (Ed25519: EdDSA, the plugin's default).
            keys[kid] = jwt.PyJWK(json.loads(public_key), algorithm=alg)
        except (ValueError, TypeError, jwt.PyJWTError):
            log.warning("jwks: key %s is not a usable public key; skipped", kid)
    return keys


def verify_jwt(token: str, keys: KeySet, database: DatabaseSession, issuer: str) -> Caller:
    """The caller a JWT names, once its signature, `exp`, `iss` and `aud` hold. Raises Refused.

    The algorithm is the key's, never the token header's own choice.
    """
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise Refused("JWT header is malformed") from None
    if not isinstance(kid, str):
        raise Refused("JWT names no kid")
    key = keys.key(kid, database)
    if key is None:
        raise Refused("JWT kid is not in the jwks table")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[key.algorithm_name],
            audience=issuer,
            issuer=issuer,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError as error:
        raise Refused(f"JWT refused: {type(error).__name__}") from None
    return Caller(_user_from(claims), None, "jwt")


def _user_from(claims: dict[str, Any]) -> CallerUser:
    """The user fields Better Auth puts in its JWTs, type-checked (a JWT is signed, still data)."""
    user = CallerUser(
        claims.get("sub"),
        claims.get("name"),
        claims.get("email"),
        claims.get("emailVerified"),
        claims.get("image"),
    )
    strings = (user.id, user.name, user.email)
    if not all(isinstance(value, str) for value in strings) or not isinstance(
        user.email_verified, bool
    ):
        raise Refused("JWT claims lack the user's fields")
    if user.image is not None and not isinstance(user.image, str):
        raise Refused("JWT image claim is not a string")
    return user
