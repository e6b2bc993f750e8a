"""Who is calling: the user and, for a session credential, the session (never its token)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class CallerUser:
    id: str
    name: str
    email: str
    email_verified: bool
    image: str | None


@dataclass(frozen=True)
class CallerSession:
    id: str
    expires_at: datetime


@dataclass(frozen=True)
class Caller:
    """The verified caller; `session` is None for a JWT, which names no session."""

    user: CallerUser
    session: CallerSession | None
    credential: str  # cookie, bearer or jwt

    def to_json(self) -> dict[str, Any]:
        user = self.user
        session = self.session
        return {
            "user": {
                "id": user.id,
                "name": user.name,
                "email": user.email,
                "emailVerified": user.email_verified,
                "image": user.image,
            },
            "session": session and {"id": session.id, "expiresAt": session.expires_at.isoformat()},
            "credential": self.credential,
        }
