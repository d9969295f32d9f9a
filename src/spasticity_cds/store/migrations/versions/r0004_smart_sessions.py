"""SMART launch sessions are kept in the store, so that every worker and host can continue a launch.

One row per session, under the sha256 of its id (the OAuth state, then the plan's id): the id itself is never
stored. The content (access token, PKCE verifier, patient, the browser it is bound to) is sealed with AES-GCM by the
web app before it reaches the store. A new table: nothing is rewritten.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "smart_sessions",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name="pk_smart_sessions"),
        sa.CheckConstraint("stage IN ('pending', 'active')", name="ck_smart_sessions_stage"),
    )
    op.create_index("ix_smart_sessions_stage_created_at", "smart_sessions", ["stage", "created_at"])
    op.create_index("ix_smart_sessions_expires_at", "smart_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("smart_sessions")
