"""Tables of the ENC store (SQLAlchemy 2). The migrations in ``enc/migrations`` create
them; ``tests/unit/test_enc_store.py`` checks that both agree.

Every table is prefixed ``enc_`` and Alembic's own table is ``enc_alembic_version``, so
the ENC can share a PostgreSQL database with the trusted server without a clash.
Times are integers, milliseconds since the Unix epoch, as on the wire.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AlertRow",
    "AuditRow",
    "Base",
    "CapCursorRow",
    "CapDeliveryRow",
    "CapMessageRow",
    "LinkedReportRow",
    "OperatorRow",
    "PhotoRow",
    "PoleAddressRow",
    "SessionRow",
    "SettingRow",
]

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class AlertRow(Base):
    __tablename__ = "enc_alerts"

    incident_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_kid: Mapped[str] = mapped_column(String(16))
    device_uid: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    """NULL once sealed (``coords_sealed``); set only in rows from before sealing."""
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    alt: Mapped[float | None] = mapped_column(Float, nullable=True)
    acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    coords_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """lat, lon, alt, acc as JSON, sealed under the store key."""
    coord_src: Mapped[str] = mapped_column(String(8))
    captured_at: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger, index=True)
    photo_size: Mapped[int] = mapped_column(Integer)
    photo_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_at: Mapped[int] = mapped_column(BigInteger)
    taken_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    escalated_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    linked_labels: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Labels and scores of linked reports of another kind, JSON ``[[label, score], ...]``:
    they raise the alert's priority and are shown with its own label."""


class PhotoRow(Base):
    __tablename__ = "enc_photos"

    incident_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("enc_alerts.incident_id"), primary_key=True
    )
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    """The photo, sealed under the store key (in clear only in rows from before
    sealing, until the store seals them when it opens)."""


class AuditRow(Base):
    """Append-only: the migrations add triggers that refuse UPDATE and DELETE."""

    __tablename__ = "enc_audit"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger)
    incident_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)


class OperatorRow(Base):
    __tablename__ = "enc_operators"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean)
    failed_logins: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    password_changed_at: Mapped[int] = mapped_column(BigInteger)


class SessionRow(Base):
    """A login; only the SHA-256 of the session token is kept."""

    __tablename__ = "enc_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(
        String(64), ForeignKey("enc_operators.username"), index=True
    )
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)


class CapMessageRow(Base):
    """A CAP message made from an audit entry (``enc._delivery``); its XML sealed under
    the store key (it carries the photo). No foreign key: a purged alert's messages are
    deleted with it, by the purge."""

    __tablename__ = "enc_cap_messages"

    identifier: Mapped[str] = mapped_column(String(128), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(64), index=True)
    audit_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    sent_at: Mapped[int] = mapped_column(BigInteger)
    msg_type: Mapped[str] = mapped_column(String(16))
    body: Mapped[bytes] = mapped_column(LargeBinary)


class CapDeliveryRow(Base):
    """One CAP message to one recipient: the retry queue."""

    __tablename__ = "enc_cap_deliveries"
    __table_args__ = (
        UniqueConstraint(
            "identifier", "recipient", name="uq_enc_cap_deliveries_identifier_recipient"
        ),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    identifier: Mapped[str] = mapped_column(
        String(128), ForeignKey("enc_cap_messages.identifier", ondelete="CASCADE"), index=True
    )
    recipient: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer)
    next_at: Mapped[int] = mapped_column(BigInteger)
    """When it may be sent (again); moved ahead while a send is under way (the lease)."""
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)


class CapCursorRow(Base):
    """How far into the audit trail the CAP messages are made."""

    __tablename__ = "enc_cap_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    audit_id: Mapped[int] = mapped_column(BigInteger)


class SettingRow(Base):
    """Values the ENC keeps for itself (the CAP photo tokens' key, sealed)."""

    __tablename__ = "enc_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class LinkedReportRow(Base):
    """A report the server fused into an alert (an N3): shown with that alert. Photo and
    position sealed under the store key, like an alert's."""

    __tablename__ = "enc_linked_reports"

    report_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    incident_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("enc_alerts.incident_id", ondelete="CASCADE"), index=True
    )
    server_kid: Mapped[str] = mapped_column(String(16))
    device_uid: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    coords_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    coord_src: Mapped[str] = mapped_column(String(8))
    captured_at: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger)
    photo_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    photo_size: Mapped[int] = mapped_column(Integer)
    photo_sha256: Mapped[str] = mapped_column(String(64))


class PoleAddressRow(Base):
    """A pole's street address as the server's registry sent it (an N4): shown with the
    alerts of that device. The highest ``version`` is kept."""

    __tablename__ = "enc_pole_addresses"

    device_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """None: the server removed it (an N4 with ``adr`` "")."""
    version: Mapped[int] = mapped_column(BigInteger)
    """The N4's ``ver``: when the server's registry set it, ms."""
    server_kid: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[int] = mapped_column(BigInteger)
