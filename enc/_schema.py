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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["AlertRow", "AuditRow", "Base", "OperatorRow", "PhotoRow", "SessionRow"]

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


class PhotoRow(Base):
    __tablename__ = "enc_photos"

    incident_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("enc_alerts.incident_id"), primary_key=True)
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
        String(64), ForeignKey("enc_operators.username"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
