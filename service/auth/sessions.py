"""The session row of a token, with its user: one indexed lookup, read only.

Better Auth owns sessions: this module never extends, refreshes or deletes one, even an expired
one (Better Auth deletes those itself when it next sees them).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session as DatabaseSession

from service.auth.caller import Caller, CallerSession, CallerUser
from service.models import Session, User

# `session_token_key` (unique on token) finds the row; the user comes by its primary key.
SESSION_WITH_USER = (
    select(
        Session.id,
        Session.expires_at,
        User.id,
        User.name,
        User.email,
        User.email_verified,
        User.image,
    )
    .join(User, User.id == Session.user_id)
    .where(Session.token == bindparam("token"))
)


def find_caller(database: DatabaseSession, token: str, credential: str) -> Caller | None:
    """The caller of a live session token, or None: no such session (signed out, revoked), its
    user gone, or `expiresAt` passed."""
    row = database.execute(SESSION_WITH_USER, {"token": token}).one_or_none()
    if row is None:
        return None
    session_id, expires_at, user_id, name, email, email_verified, image = row
    if expires_at.tzinfo is None:  # SQLite returns naive values; they are UTC
        expires_at = expires_at.replace(tzinfo=UTC)
    if expires_at <= datetime.now(UTC):
        return None
    return Caller(
        CallerUser(user_id, name, email, email_verified, image),
        CallerSession(session_id, expires_at),
        credential,
    )
