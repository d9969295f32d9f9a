"""Issued cards keep their suggestion uuids; feedback flags accepted suggestions the card did not carry.

CDS Hooks feedback names accepted suggestions by the uuids the card issued; without them stored, a report that
accepts a suggestion never issued was counted as an acceptance like any other. Both columns are nullable: cards
issued before this revision did not keep their suggestions, and feedback on them (or on an unknown card) cannot be
checked, which NULL says. Nothing is rewritten.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("issued_cards", sa.Column("suggestion_uuids", sa.JSON(), nullable=True))
    op.add_column("hook_feedback", sa.Column("unknown_suggestions", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("hook_feedback", "unknown_suggestions")
    op.drop_column("issued_cards", "suggestion_uuids")
