"""The four core tables of Better Auth 1.7, exactly as its own migrator creates them on PostgreSQL.

Better Auth owns these tables' contents: it generates ids, hashes passwords and sets timestamps.
Column names are Better Auth's camelCase; the attributes are pythonic. Defaults on the Python side
(ids, timestamps) only help code and tests that write rows themselves; the schema carries exactly
the server defaults Better Auth declares. Reference: docs/schema.md.
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.extensions import db

_ID_ALPHABET = string.ascii_letters + string.digits
CURRENT_TIMESTAMP = text("CURRENT_TIMESTAMP")


def new_id() -> str:
    """A 32-character random id, the shape Better Auth generates."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(32))


def utc_now() -> datetime:
    return datetime.now(UTC)


def _created_at() -> Mapped[datetime]:
    return mapped_column(
        "createdAt",
        DateTime(timezone=True),
        nullable=False,
        default=utc_now,
        server_default=CURRENT_TIMESTAMP,
    )


def _updated_at(*, server_default: bool) -> Mapped[datetime]:
    return mapped_column(
        "updatedAt",
        DateTime(timezone=True),
        nullable=False,
        default=utc_now,
        onupdate=utc_now,
        server_default=CURRENT_TIMESTAMP if server_default else None,
    )


def _timestamp(column: str, *, nullable: bool = False) -> Mapped[datetime]:
    """A timestamptz column with no default: its value always comes from the caller."""
    return mapped_column(column, DateTime(timezone=True), nullable=nullable)


class User(db.Model):
    __tablename__ = "user"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    email: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    email_verified: Mapped[bool] = mapped_column(
        "emailVerified", Boolean, nullable=False, default=False
    )
    image: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at(server_default=True)

    sessions: Mapped[list[Session]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )
    accounts: Mapped[list[Account]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class Session(db.Model):
    __tablename__ = "session"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    expires_at: Mapped[datetime] = _timestamp("expiresAt")
    token: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at(server_default=False)
    ip_address: Mapped[str | None] = mapped_column("ipAddress", Text)
    user_agent: Mapped[str | None] = mapped_column("userAgent", Text)
    user_id: Mapped[str] = mapped_column(
        "userId", Text, ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True
    )

    user: Mapped[User] = relationship(back_populates="sessions")


class Account(db.Model):
    __tablename__ = "account"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column("accountId", Text, nullable=False)
    provider_id: Mapped[str] = mapped_column("providerId", Text, nullable=False)
    user_id: Mapped[str] = mapped_column(
        "userId", Text, ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True
    )
    access_token: Mapped[str | None] = mapped_column("accessToken", Text)
    refresh_token: Mapped[str | None] = mapped_column("refreshToken", Text)
    id_token: Mapped[str | None] = mapped_column("idToken", Text)
    access_token_expires_at: Mapped[datetime | None] = _timestamp(
        "accessTokenExpiresAt", nullable=True
    )
    refresh_token_expires_at: Mapped[datetime | None] = _timestamp(
        "refreshTokenExpiresAt", nullable=True
    )
    scope: Mapped[str | None] = mapped_column(Text)
    password: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at(server_default=False)

    user: Mapped[User] = relationship(back_populates="accounts")


class Verification(db.Model):
    __tablename__ = "verification"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    identifier: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    expires_at: Mapped[datetime] = _timestamp("expiresAt")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at(server_default=True)


class Jwks(db.Model):
    """The jwt plugin's signing keys; the service reads the public halves to verify JWTs."""

    __tablename__ = "jwks"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    public_key: Mapped[str] = mapped_column("publicKey", Text, nullable=False)
    private_key: Mapped[str] = mapped_column("privateKey", Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        "createdAt", DateTime(timezone=True), nullable=False, default=utc_now
    )
    expires_at: Mapped[datetime | None] = _timestamp("expiresAt", nullable=True)
    alg: Mapped[str | None] = mapped_column(Text)
    crv: Mapped[str | None] = mapped_column(Text)
