"""CDS Hooks feedback is unique by card and report content, not by card, outcome and time.

A client that reports the same outcome at the same instant again, now with an override reason or a comment, sent
a new report; under the old key it was acknowledged and dropped. Existing rows get the digest of their content.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import sqlalchemy as sa
from alembic import op

# The one import from the package: old rows must get the digest the running code computes for a report sent again.
from spasticity_cds.store.records import report_digest

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KEY = "uq_hook_feedback_card_uuid_outcome_outcome_timestamp"
NEW_KEY = "uq_hook_feedback_card_uuid_report_digest"


def upgrade() -> None:
    with op.batch_alter_table("hook_feedback") as batch:
        batch.add_column(sa.Column("report_digest", sa.String(64), nullable=True))
    _fill_digests()
    with op.batch_alter_table("hook_feedback") as batch:
        batch.alter_column("report_digest", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint(OLD_KEY, type_="unique")
        batch.create_unique_constraint(NEW_KEY, ["card_uuid", "report_digest"])


def _fill_digests() -> None:
    rows = sa.table(
        "hook_feedback",
        sa.column("id", sa.BigInteger()),
        sa.column("outcome", sa.String()),
        sa.column("outcome_timestamp", sa.DateTime(timezone=True)),
        sa.column("accepted_suggestions", sa.JSON()),
        sa.column("override_reason_code", sa.String()),
        sa.column("override_reason_system", sa.String()),
        sa.column("override_reason_display", sa.Text()),
        sa.column("user_comment", sa.Text()),
        sa.column("report_digest", sa.String()),
    )
    connection = op.get_bind()
    for row in connection.execute(sa.select(rows)).mappings().all():
        reason = (
            row["override_reason_code"],
            row["override_reason_system"],
            row["override_reason_display"],
            row["user_comment"],
        )
        at = row["outcome_timestamp"]  # SQLite hands back the stored UTC value without its zone
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        digest = report_digest(row["outcome"], at, row["accepted_suggestions"], reason)
        connection.execute(sa.update(rows).where(rows.c.id == row["id"]).values(report_digest=digest))


def downgrade() -> None:
    """Not supported: reports that differ only in content would break the old key."""
    raise NotImplementedError("the feedback store cannot go back to revision 0001")
