"""Database models; importing this package registers every table on `db.metadata`."""

from service.models.auth import Account, Session, User, Verification

__all__ = ["Account", "Session", "User", "Verification"]
