"""Initial schema: issued cards, CDS Hooks feedback, page feedback and the JWT replay cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _create_issued_cards() -> None:
    op.create_table(
        "issued_cards",
        sa.Column("card_uuid", sa.String(128), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("hook_instance", sa.String(128), nullable=False),
        sa.Column("rule_id", sa.String(255), nullable=False),
        sa.Column("rule_version", sa.Integer(), nullable=False),
        sa.Column("kb_version", sa.String(255), nullable=False),
        sa.Column("patient_ref_hash", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("card_uuid", name="pk_issued_cards"),
    )
    op.create_index("ix_issued_cards_rule_id_rule_version", "issued_cards", ["rule_id", "rule_version"])


def _create_hook_feedback() -> None:
    op.create_table(
        "hook_feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("hook_instance", sa.String(128), nullable=True),
        sa.Column("card_uuid", sa.String(128), nullable=False),
        sa.Column("rule_id", sa.String(255), nullable=True),
        sa.Column("rule_version", sa.Integer(), nullable=True),
        sa.Column("kb_version", sa.String(255), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("override_reason_code", sa.String(255), nullable=True),
        sa.Column("override_reason_system", sa.String(2048), nullable=True),
        sa.Column("override_reason_display", sa.Text(), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hook_feedback"),
        sa.UniqueConstraint(
            "card_uuid",
            "outcome",
            "outcome_timestamp",
            name="uq_hook_feedback_card_uuid_outcome_outcome_timestamp",
        ),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_hook_feedback_outcome"),
    )
    op.create_index("ix_hook_feedback_received_at", "hook_feedback", ["received_at"])


def _create_page_feedback() -> None:
    op.create_table(
        "page_feedback",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("context", sa.String(32), nullable=False),
        sa.Column("answered", sa.Boolean(), nullable=True),
        sa.Column("useful", sa.Boolean(), nullable=True),
        sa.Column("rule_id", sa.String(255), nullable=True),
        sa.Column("rule_version", sa.Integer(), nullable=True),
        sa.Column("kb_version", sa.String(255), nullable=True),
        sa.Column("card_uuid", sa.String(128), nullable=True),
        sa.Column("override_reason_code", sa.String(255), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_page_feedback"),
        sa.CheckConstraint("context IN ('answer-page', 'patient-plan', 'finding')", name="ck_page_feedback_context"),
    )
    op.create_index("ix_page_feedback_rule_id_rule_version", "page_feedback", ["rule_id", "rule_version"])
    op.create_index("ix_page_feedback_created_at", "page_feedback", ["created_at"])


def _create_jwt_replay() -> None:
    op.create_table(
        "jwt_replay",
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("jti", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name="pk_jwt_replay"),
    )
    op.create_index("ix_jwt_replay_expires_at", "jwt_replay", ["expires_at"])


def upgrade() -> None:
    """Create the four tables and their indexes."""
    _create_issued_cards()
    _create_hook_feedback()
    _create_page_feedback()
    _create_jwt_replay()


def downgrade() -> None:
    """Drop everything this revision created."""
    for table in ("jwt_replay", "page_feedback", "hook_feedback", "issued_cards"):
        op.drop_table(table)
