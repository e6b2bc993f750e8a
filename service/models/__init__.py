"""Database models; importing this package registers every table on `db.metadata`."""

from service.models.auth import Account, Jwks, Session, User, Verification

__all__ = ["Account", "Jwks", "Session", "User", "Verification"]
