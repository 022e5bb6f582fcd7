"""Database tables (SQLAlchemy 2). Times are integers, ms since the Unix epoch (UTC),
as on the wire. The migrations in ``server/migrations`` create exactly these."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditEntry",
    "Base",
    "DeviceRow",
    "IncidentRow",
    "OutboxRow",
    "WindowRow",
    "ZoneBroadcastRow",
]


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    kid: Mapped[bytes] = mapped_column(LargeBinary(8), unique=True)
    zone: Mapped[str] = mapped_column(String(64), index=True)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    alg: Mapped[int] = mapped_column(Integer)
    key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    """K_SD sealed under the master key (``MasterKey.seal_device_key``)."""
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    """Last broadcast epoch sent."""
    last_b1_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_b1_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    confirmed_epoch: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Epoch of the last B2 received."""
    confirmed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger, index=True)
    address: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """Street address of the pole, or None."""
    address_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When the address was last set or removed, ms (the N4's ``ver``); None: never."""
    address_sent_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """The ``address_at`` the ENC last confirmed (an N2 for its N4)."""


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text, default="")


class WindowRow(Base):
    """A monitoring window opened by an operator (schedules live in the config)."""

    __tablename__ = "monitoring_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    zone: Mapped[str] = mapped_column(String(64), index=True)
    opens_at: Mapped[int] = mapped_column(BigInteger)
    closes_at: Mapped[int] = mapped_column(BigInteger)
    opened_by: Mapped[str] = mapped_column(String(128))
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    updated_at: Mapped[int] = mapped_column(BigInteger, index=True)


class ZoneBroadcastRow(Base):
    """What was last announced to a zone: replicas compare-and-set it so that one, and
    only one, sends the B1s for a change."""

    __tablename__ = "zone_broadcasts"

    zone: Mapped[str] = mapped_column(String(64), primary_key=True)
    announced_until: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    announced_at: Mapped[int] = mapped_column(BigInteger)


class IncidentRow(Base):
    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """``protocol.incident_id_for(kid, cid)``: the same report always lands here."""
    kid: Mapped[bytes] = mapped_column(LargeBinary(8), index=True)
    cid: Mapped[bytes] = mapped_column(LargeBinary(16))
    device_uid: Mapped[str] = mapped_column(String(64), index=True)
    zone: Mapped[str] = mapped_column(String(64))
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    """NULL once sealed (``coords_sealed``); set only in rows from before sealing."""
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    alt: Mapped[float | None] = mapped_column(Float, nullable=True)
    acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    coords_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """lat, lon, alt, acc as JSON, sealed under the master key's record key."""
    coords_src: Mapped[str] = mapped_column(String(8))
    photo: Mapped[bytes] = mapped_column(LargeBinary)
    """The JPEG, sealed (``hardware._wrapped.RecordSealer``); in clear in rows from
    before sealing until the server seals them at start-up."""
    device_score: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(32))
    captured_at: Mapped[int] = mapped_column(BigInteger)
    td: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger, index=True)
    server_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    uncertain: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    """None until verified; then "dangerous" (sent to the ENC) or "dismissed"."""
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fused_into: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    """For a dangerous incident fused into an earlier nearby one: that incident's id
    (its alert covers both)."""


class OutboxRow(Base):
    """An alert to deliver to the ENC. Rows are never deleted: delivered ones keep the
    ENC's receipt time."""

    __tablename__ = "enc_outbox"

    incident_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16))
    """"pending" or "delivered"."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    lease_until: Mapped[int] = mapped_column(BigInteger, default=0)
    """A replica working on the row holds it until then; others leave it alone."""
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tenc: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    linked_to: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """A report fused into an alert sent before: that alert's incident id (the ENC gets
    an N3 linked report, or an N1 of its own where it does not know N3)."""

    __table_args__ = (Index("ix_enc_outbox_due", "state", "next_attempt_at"),)
