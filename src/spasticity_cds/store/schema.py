"""The store's tables as SQLAlchemy Core metadata; migrations must produce exactly this schema."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 128
NAME_LENGTH = 255
URL_LENGTH = 2048
ISSUER_LENGTH = 512


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("the store only accepts timezone-aware datetimes")
        utc_value = value.astimezone(UTC)
        return utc_value.replace(tzinfo=None) if dialect.name == "sqlite" else utc_value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row_id() -> Column[int]:
    return Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)


metadata = MetaData(naming_convention=NAMING_CONVENTION)

issued_cards = Table(
    "issued_cards",
    metadata,
    Column("card_uuid", String(ID_LENGTH), nullable=False),
    Column("service_id", String(NAME_LENGTH), nullable=False),
    Column("hook_instance", String(ID_LENGTH), nullable=False),
    Column("rule_id", String(NAME_LENGTH), nullable=False),
    Column("rule_version", Integer(), nullable=False),
    Column("kb_version", String(NAME_LENGTH), nullable=False),
    Column("patient_ref_hash", String(64), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("suggestion_uuids", JSON(none_as_null=True), nullable=True),  # NULL: issued before revision 0003, not kept
    PrimaryKeyConstraint("card_uuid"),
    Index(None, "rule_id", "rule_version"),
)

hook_feedback = Table(
    "hook_feedback",
    metadata,
    _row_id(),
    Column("service_id", String(NAME_LENGTH), nullable=False),
    Column("hook_instance", String(ID_LENGTH), nullable=True),
    Column("card_uuid", String(ID_LENGTH), nullable=False),
    Column("rule_id", String(NAME_LENGTH), nullable=True),
    Column("rule_version", Integer(), nullable=True),
    Column("kb_version", String(NAME_LENGTH), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", JSON(), nullable=False),
    Column("override_reason_code", String(NAME_LENGTH), nullable=True),
    Column("override_reason_system", String(URL_LENGTH), nullable=True),
    Column("override_reason_display", Text(), nullable=True),
    Column("user_comment", Text(), nullable=True),
    Column("outcome_timestamp", UtcDateTime(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("report_digest", String(64), nullable=False),
    Column("unknown_suggestions", JSON(none_as_null=True), nullable=True),  # NULL: could not be checked
    UniqueConstraint("card_uuid", "report_digest"),
    CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
    Index(None, "received_at"),
)

page_feedback = Table(
    "page_feedback",
    metadata,
    Column("id", Uuid(), nullable=False),
    Column("context", String(32), nullable=False),
    Column("answered", Boolean(), nullable=True),
    Column("useful", Boolean(), nullable=True),
    Column("rule_id", String(NAME_LENGTH), nullable=True),
    Column("rule_version", Integer(), nullable=True),
    Column("kb_version", String(NAME_LENGTH), nullable=True),
    Column("card_uuid", String(ID_LENGTH), nullable=True),
    Column("override_reason_code", String(NAME_LENGTH), nullable=True),
    Column("comment", Text(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("id"),
    CheckConstraint("context IN ('answer-page', 'patient-plan', 'finding')", name="context"),
    Index(None, "rule_id", "rule_version"),
    Index(None, "created_at"),
)

jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("issuer", String(ISSUER_LENGTH), nullable=False),
    Column("jti", String(NAME_LENGTH), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("issuer", "jti"),
    Index(None, "expires_at"),
)

smart_sessions = Table(
    "smart_sessions",
    metadata,
    Column("key_hash", String(64), nullable=False),  # sha256 of the session id: the id itself is never stored
    Column("stage", String(16), nullable=False),
    Column("sealed", LargeBinary(), nullable=False),  # AES-GCM, sealed by the web app: the store cannot read it
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("key_hash"),
    CheckConstraint("stage IN ('pending', 'active')", name="stage"),
    Index(None, "stage", "created_at"),
    Index(None, "expires_at"),
)
