"""Better Auth 1.7 jwt plugin: the `jwks` table of its signing keys.

Exactly what Better Auth's own migrator creates with the jwt plugin enabled (docs/schema.md), so
its `getMigrations` finds nothing to create or add. The service reads only `id`, `publicKey`,
`expiresAt` and `alg`, to verify the JWTs Better Auth issues (docs/auth.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jwks",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("publicKey", sa.Text(), nullable=False),
        sa.Column("privateKey", sa.Text(), nullable=False),
        sa.Column("createdAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expiresAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alg", sa.Text(), nullable=True),
        sa.Column("crv", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("jwks_pkey")),
    )


def downgrade() -> None:
    op.drop_table("jwks")
