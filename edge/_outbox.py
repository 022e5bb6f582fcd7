"""The durable outbox: captured incidents wait here until the server's C4 says they are
stored, and not a moment less.

Policy (docs/edge.md):

- An incident is committed to disk (fsync'd) before any network traffic about it; it is
  deleted only after the matching C4 (``ReportDelivered``).
- Photos at rest are sealed with the device key: AES-GCM, a fresh 12-byte IV each, and
  the capture id in the associated data, so a sealed photo cannot be swapped between
  incidents. The metadata (time, label, score, coordinates) stays readable so that the
  status can be told without the key store.
- The outbox has a cap (incidents and bytes). When it is reached, or the disk is full,
  the NEW capture is refused with ``OutboxFull`` and the daemon reports it; incidents
  already stored are never dropped to make room.

Why SQLite and not one file per incident: one fsync'd commit makes an incident (metadata
and photo) appear whole or not at all; the rowid gives the order of capture; SUM() gives
the size for the cap; and the write-ahead log's checksummed frames make a torn last
write (power cut in the middle of a commit) roll back by itself at the next open. With
files we would need a file fsync plus a folder fsync per incident, a scan to find the
order and sizes, and our own cleanup of half-written temporary files.

    OutboxError                 the outbox cannot be used (unreadable file, newer schema)
    ├── OutboxFull              a capture was refused: the cap is reached
    │   └── OutboxDiskFull      ... or the filesystem is full (ENOSPC, SQLITE_FULL)
    ├── IncidentRejected        a capture the server would refuse (not a JPEG, too big ...)
    └── OutboxDamaged           a stored photo does not open with the device key
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from protocol import (
    DEFAULT_MAX_PHOTO,
    AuthenticationFailed,
    Cipher,
    Coords,
    LocalProtocolError,
    PendingReport,
    RemoteProtocolError,
)

from ._errors import EdgeError
from ._state import wall_ms

__all__ = [
    "OUTBOX_FILE",
    "IncidentRejected",
    "Outbox",
    "OutboxDamaged",
    "OutboxDiskFull",
    "OutboxError",
    "OutboxFull",
    "OutboxUsage",
    "StoredIncident",
    "photo_aad",
]

OUTBOX_FILE = "outbox.sqlite3"
_SCHEMA_VERSION = 1
_IV_LENGTH = 12
_CID_LENGTH = 16
# Domain separation: the same device key seals protocol messages, whose associated data
# is a COSE Enc_structure; this prefix can never be one.
_AAD_PREFIX = b"citywatch/outbox/photo\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of capture, never reused
    cid          BLOB    NOT NULL UNIQUE CHECK (length(cid) = 16),
    captured_at  INTEGER NOT NULL,                   -- ms, device clock
    stored_at    INTEGER NOT NULL,                   -- ms, device clock
    label        TEXT    NOT NULL,
    score        REAL    NOT NULL,
    coords       TEXT    NOT NULL,                   -- JSON of protocol Coords
    photo_iv     BLOB    NOT NULL CHECK (length(photo_iv) = 12),
    photo_sealed BLOB    NOT NULL,                   -- AES-GCM ciphertext + tag
    size         INTEGER NOT NULL,                   -- bytes counted against the cap
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    damaged      TEXT                                -- why it cannot be opened, or NULL
);
"""


class OutboxError(EdgeError):
    """The outbox cannot be used; the message names the file and what to do."""


class OutboxFull(OutboxError):
    """A capture was refused because the outbox is at its cap. Nothing stored was lost."""


class OutboxDiskFull(OutboxFull):
    """A capture (or a deletion) failed because the filesystem is full."""


class IncidentRejected(OutboxError):
    """A capture the server would refuse (not a JPEG, photo too large, bad coordinates)."""


class OutboxDamaged(OutboxError):
    """A stored photo does not open with the device key (another key, or damage)."""


def photo_aad(cid: bytes) -> bytes:
    """Associated data of a sealed photo: binds it to its capture id."""
    return _AAD_PREFIX + cid


@dataclass(frozen=True, slots=True)
class StoredIncident:
    """An incident waiting in the outbox, with its photo opened."""

    cid: bytes
    """16-byte capture id (the idempotency key at the server)."""
    captured_at: int
    """Capture time, ms."""
    stored_at: int
    """When it was committed to the outbox, ms."""
    label: str
    """Pre-screen label."""
    score: float
    """Pre-screen score."""
    coords: Coords
    """Where the pole is."""
    photo: bytes = field(repr=False)
    """The JPEG."""
    attempts: int
    """Delivery attempts recorded so far."""

    def report(self) -> PendingReport:
        """The incident as the protocol core delivers it."""
        return PendingReport(
            cid=self.cid,
            coords=self.coords,
            photo=self.photo,
            score=self.score,
            label=self.label,
            captured_at=self.captured_at,
        )


@dataclass(frozen=True, slots=True)
class OutboxUsage:
    """How full the outbox is."""

    depth: int
    """Incidents stored (delivered ones are gone)."""
    bytes: int
    """Bytes counted against ``max_bytes``."""
    max_incidents: int
    max_bytes: int
    oldest_captured_at: int | None
    """Capture time of the oldest incident, ms."""
    damaged: int
    """Incidents whose photo cannot be opened; kept, not delivered."""
    refusing: bool
    """True since a capture was refused, until one is stored again."""
    refused: int
    """Captures refused since this ``Outbox`` was opened."""


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Outbox:
    """Incidents on disk until delivered, oldest first. Thread-safe: the capture pipeline
    adds from its thread while the protocol client reads and deletes from its own."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cipher: Cipher,
        max_incidents: int = 1000,
        max_bytes: int = 256 * 1024 * 1024,
        max_photo: int = DEFAULT_MAX_PHOTO,
        random: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        if max_incidents < 1 or max_bytes < 1:
            raise ValueError("the outbox caps must be positive")
        self.path = Path(path)
        self._cipher = cipher
        self.max_incidents = max_incidents
        self.max_bytes = max_bytes
        self.max_photo = max_photo
        self._random = random
        self._clock = clock
        self._lock = threading.Lock()
        self._refusing = False
        self._refused = 0
        self._db = self._open()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._unusable("cannot open", exc) from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise OutboxError(
                    f"the outbox {self.path} cannot use a write-ahead log (the "
                    f"filesystem gave journal mode {mode!r}): put state_dir on a "
                    "local filesystem"
                )
            # FULL: the WAL is fsync'd at every commit, so a committed incident survives a
            # power cut (NORMAL would only keep the database consistent, not durable).
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise OutboxError(
                    f"the outbox {self.path} was written by a newer CityWatch "
                    f"(schema {version}, this one knows {_SCHEMA_VERSION}): "
                    "upgrade this one rather than downgrading"
                )
            if version < _SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                db.execute("COMMIT")
        except OutboxError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            raise self._unusable("cannot read", exc) from None
        return db

    def _unusable(self, what: str, exc: BaseException) -> OutboxError:
        if _is_disk_full(exc):
            return OutboxDiskFull(
                f"{what} the outbox {self.path}: the disk is full. Free space on the "
                f"filesystem of {self.path.parent}, then restart the daemon"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            return OutboxError(
                f"{self.path} is not an outbox database ({exc}): move it aside (it may hold "
                "undelivered incidents worth a look) and restart; a new one is created"
            )
        return OutboxError(
            f"{what} the outbox {self.path}: {exc}. Check that state_dir exists "
            "and is writable by the daemon"
        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error."""
        with self._lock:
            self._check_open()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _check_open(self) -> None:
        if self._db is None:
            raise OutboxError(f"the outbox {self.path} is closed")

    # -- capture side --------------------------------------------------------------------

    def add(
        self,
        *,
        photo: bytes,
        coords: Coords,
        score: float,
        label: str,
        captured_at: int,
        cid: bytes | None = None,
    ) -> bytes:
        """Store an incident durably; return its capture id once it is on disk.

        Raises ``OutboxFull`` (the cap) or ``OutboxDiskFull`` (no space) and stores
        nothing; raises ``IncidentRejected`` for an incident the server would refuse.
        """
        cid = self._random(_CID_LENGTH) if cid is None else bytes(cid)
        score = float(score)
        if len(photo) > self.max_photo:
            raise IncidentRejected(
                f"the photo is {len(photo)} bytes, above the server's limit "
                f"of {self.max_photo} (protocol.max_photo_bytes): lower the "
                "snapshot resolution or JPEG quality"
            )
        try:
            PendingReport(
                cid=cid,
                coords=coords,
                photo=photo,
                score=score,
                label=label,
                captured_at=captured_at,
            )
        except LocalProtocolError as exc:
            raise IncidentRejected(f"this incident could never be delivered: {exc}") from None
        iv = self._random(_IV_LENGTH)
        sealed = self._cipher.seal(iv=iv, plaintext=photo, aad=photo_aad(cid))
        size = len(sealed) + 512  # the row's metadata and page overhead, roughly
        try:
            with self._write() as db:
                depth, used = db.execute(
                    "SELECT count(*), coalesce(sum(size), 0) FROM incidents"
                ).fetchone()
                if depth + 1 > self.max_incidents or used + size > self.max_bytes:
                    raise OutboxFull(
                        f"outbox full: {depth} incidents, {used} bytes stored (caps "
                        f"outbox.max_incidents={self.max_incidents}, outbox.max_bytes="
                        f"{self.max_bytes}). This {label} capture was NOT stored; the stored "
                        "ones are kept and go out first. Find out why deliveries fail "
                        "(`citywatch edge status`: broker, delivery) or raise the caps"
                    )
                db.execute(
                    "INSERT INTO incidents (cid, captured_at, stored_at, label, score, coords,"
                    " photo_iv, photo_sealed, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cid,
                        captured_at,
                        self._clock(),
                        label,
                        score,
                        json.dumps(coords.to_map()),
                        iv,
                        sealed,
                        size,
                    ),
                )
        except OutboxFull:
            self._note_refusal()
            raise
        except (sqlite3.Error, OSError) as exc:
            if _is_disk_full(exc):
                self._note_refusal()
                raise OutboxDiskFull(
                    f"the disk holding the outbox ({self.path.parent}) is full: this {label} "
                    "capture was NOT stored; the incidents already stored are kept and will be "
                    "delivered. Free space on that filesystem (old logs, core dumps) or move "
                    "state_dir to a bigger one"
                ) from None
            if isinstance(exc, sqlite3.IntegrityError):
                raise IncidentRejected(
                    f"an incident with capture id {cid.hex()} is already stored"
                ) from None
            raise OutboxError(f"cannot store the incident in {self.path}: {exc}") from None
        self._refusing = False
        return cid

    def _note_refusal(self) -> None:
        self._refusing = True
        self._refused += 1

    # -- delivery side -------------------------------------------------------------------

    def oldest(self, *, exclude: frozenset[bytes] = frozenset()) -> StoredIncident | None:
        """The oldest incident to deliver (not damaged, not in ``exclude``), photo opened.

        A photo that does not open is marked damaged (kept, never delivered, counted in
        ``usage().damaged``) and the next one is tried.
        """
        skip = set(exclude)
        while True:
            with self._lock:
                self._check_open()
                rows = self._db.execute(
                    "SELECT cid, captured_at, stored_at, label, score, coords, photo_iv, "
                    "photo_sealed, attempts FROM incidents WHERE damaged IS NULL "
                    "ORDER BY seq LIMIT ?",
                    (len(skip) + 1,),
                ).fetchall()
            row = next((r for r in rows if bytes(r[0]) not in skip), None)
            if row is None:
                return None
            try:
                return self._incident(row)
            except OutboxDamaged as exc:
                # Skipped even if marking it fails (a full disk), so the loop always ends.
                skip.add(bytes(row[0]))
                self._mark_damaged(bytes(row[0]), str(exc))

    def get(self, cid: bytes) -> StoredIncident | None:
        """The incident with this capture id, photo opened; None if not stored."""
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT cid, captured_at, stored_at, label, score, coords, photo_iv, "
                "photo_sealed, attempts FROM incidents WHERE cid = ?",
                (cid,),
            ).fetchone()
        return None if row is None else self._incident(row)

    def cids(self) -> list[bytes]:
        """Capture ids of every stored incident, oldest first."""
        with self._lock:
            self._check_open()
            return [bytes(r[0]) for r in self._db.execute("SELECT cid FROM incidents ORDER BY seq")]

    def delete(self, cid: bytes) -> bool:
        """Forget a delivered incident; False if it was not stored.

        ``OutboxDiskFull`` if even the deletion finds no room (SQLite logs it first): the
        caller keeps the capture id and tries again later; re-delivering it meanwhile is
        harmless, the server answers the same incident id.
        """
        try:
            with self._write() as db:
                n = db.execute("DELETE FROM incidents WHERE cid = ?", (cid,)).rowcount
        except (sqlite3.Error, OSError) as exc:
            if _is_disk_full(exc):
                raise OutboxDiskFull(
                    f"cannot delete a delivered incident from {self.path}: the "
                    "disk is full; free space on that filesystem"
                ) from None
            raise OutboxError(f"cannot delete an incident from {self.path}: {exc}") from None
        if n:
            self._refusing = False
        return bool(n)

    def expire(self, max_age_ms: int) -> list[bytes]:
        """Retention: forget incidents stored longer ago than ``max_age_ms`` (delivered
        or not, damaged included: a photo of a person is not kept for ever on a pole
        that cannot reach its server); their capture ids, oldest first.

        ``OutboxDiskFull`` if even the deletion finds no room: nothing was removed, the
        caller tries again later.
        """
        cutoff = self._clock() - max_age_ms
        try:
            with self._write() as db:
                gone = [
                    bytes(r[0])
                    for r in db.execute(
                        "SELECT cid FROM incidents WHERE stored_at < ? ORDER BY seq", (cutoff,)
                    )
                ]
                db.execute("DELETE FROM incidents WHERE stored_at < ?", (cutoff,))
        except (sqlite3.Error, OSError) as exc:
            if _is_disk_full(exc):
                raise OutboxDiskFull(
                    f"cannot expire old incidents in {self.path}: the disk "
                    "is full; free space on that filesystem"
                ) from None
            raise OutboxError(f"cannot expire old incidents in {self.path}: {exc}") from None
        if gone:
            self._refusing = False
        return gone

    def note_attempt(self, cid: bytes, error: str | None = None) -> None:
        """Count a delivery attempt (and why it failed), best effort: a full disk must not
        stop deliveries, so failures here are ignored."""
        with contextlib.suppress(sqlite3.Error, OSError, OutboxError), self._write() as db:
            db.execute(
                "UPDATE incidents SET attempts = attempts + 1, last_error = ? WHERE cid = ?",
                (error, cid),
            )

    def usage(self) -> OutboxUsage:
        with self._lock:
            self._check_open()
            depth, used, oldest, damaged = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(captured_at), "
                "count(damaged) FROM incidents"
            ).fetchone()
        return OutboxUsage(
            depth=depth,
            bytes=used,
            max_incidents=self.max_incidents,
            max_bytes=self.max_bytes,
            oldest_captured_at=oldest,
            damaged=damaged,
            refusing=self._refusing,
            refused=self._refused,
        )

    def close(self) -> None:
        """Close the database (idempotent). A clean close also folds the log into the
        database file; an unclean stop loses nothing, the next open does it."""
        with self._lock:
            db, self._db = self._db, None  # type: ignore[assignment]
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------

    def _incident(self, row: tuple[object, ...]) -> StoredIncident:
        cid, captured_at, stored_at, label, score, coords, iv, sealed, attempts = row
        assert isinstance(cid, bytes) and isinstance(iv, bytes) and isinstance(sealed, bytes)
        try:
            photo = self._cipher.open(iv=iv, ciphertext=sealed, aad=photo_aad(cid))
        except AuthenticationFailed:
            raise OutboxDamaged(
                f"the photo of incident {cid.hex()} in {self.path} does not open with the "
                "device key: it was sealed with another key (the device was provisioned "
                "again?) or the file is damaged. It is kept but cannot be delivered"
            ) from None
        try:
            gc = Coords.from_map(json.loads(str(coords)))
        except (ValueError, RemoteProtocolError) as exc:
            raise OutboxDamaged(
                f"the coordinates of incident {cid.hex()} in {self.path} are damaged: {exc}"
            ) from None
        return StoredIncident(
            cid=cid,
            captured_at=int(captured_at),  # type: ignore[call-overload]
            stored_at=int(stored_at),  # type: ignore[call-overload]
            label=str(label),
            score=float(score),  # type: ignore[arg-type]
            coords=gc,
            photo=photo,
            attempts=int(attempts),  # type: ignore[call-overload]
        )

    def _mark_damaged(self, cid: bytes, why: str) -> None:
        with contextlib.suppress(sqlite3.Error, OSError), self._write() as db:
            db.execute("UPDATE incidents SET damaged = ? WHERE cid = ?", (why, cid))
