"""Better Auth 1.7 core tables: user, session, account, verification.

Exactly what Better Auth's own migrator creates on PostgreSQL (see docs/schema.md), so its
`getMigrations` finds nothing to create or add. Constraint names are PostgreSQL's defaults,
which is what Better Auth gets by naming none; the three index names are Better Auth's own,
which it looks up by name.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CURRENT_TIMESTAMP = sa.text("CURRENT_TIMESTAMP")


def timestamp(name: str, *, nullable: bool = False, now_default: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=CURRENT_TIMESTAMP if now_default else None,
    )


def user_reference() -> sa.Column:
    return sa.Column("userId", sa.Text(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "user",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("emailVerified", sa.Boolean(), nullable=False),
        sa.Column("image", sa.Text(), nullable=True),
        timestamp("createdAt", now_default=True),
        timestamp("updatedAt", now_default=True),
        sa.PrimaryKeyConstraint("id", name=op.f("user_pkey")),
        sa.UniqueConstraint("email", name=op.f("user_email_key")),
    )
    op.create_table(
        "session",
        sa.Column("id", sa.Text(), nullable=False),
        timestamp("expiresAt"),
        sa.Column("token", sa.Text(), nullable=False),
        timestamp("createdAt", now_default=True),
        timestamp("updatedAt"),
        sa.Column("ipAddress", sa.Text(), nullable=True),
        sa.Column("userAgent", sa.Text(), nullable=True),
        user_reference(),
        sa.ForeignKeyConstraint(
            ["userId"], ["user.id"], name=op.f("session_userId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("session_pkey")),
        sa.UniqueConstraint("token", name=op.f("session_token_key")),
    )
    op.create_index(op.f("session_userId_idx"), "session", ["userId"])
    op.create_table(
        "account",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("providerId", sa.Text(), nullable=False),
        user_reference(),
        sa.Column("accessToken", sa.Text(), nullable=True),
        sa.Column("refreshToken", sa.Text(), nullable=True),
        sa.Column("idToken", sa.Text(), nullable=True),
        timestamp("accessTokenExpiresAt", nullable=True),
        timestamp("refreshTokenExpiresAt", nullable=True),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("password", sa.Text(), nullable=True),
        timestamp("createdAt", now_default=True),
        timestamp("updatedAt"),
        sa.ForeignKeyConstraint(
            ["userId"], ["user.id"], name=op.f("account_userId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("account_pkey")),
    )
    op.create_index(op.f("account_userId_idx"), "account", ["userId"])
    op.create_table(
        "verification",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        timestamp("expiresAt"),
        timestamp("createdAt", now_default=True),
        timestamp("updatedAt", now_default=True),
        sa.PrimaryKeyConstraint("id", name=op.f("verification_pkey")),
    )
    op.create_index(op.f("verification_identifier_idx"), "verification", ["identifier"])


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children go before their parent.
    for table in ("verification", "account", "session", "user"):
        op.drop_table(table)
