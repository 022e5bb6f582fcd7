"""CAP 1.2 out to the dispatch world: every status change of an alert becomes a CAP
message, kept in the ENC's database and sent by HTTP POST to each configured recipient
with a durable retry queue (like the trusted server's ENC outbox).

How it holds together:

- ``CapOutbox.follow`` reads the audit trail from its cursor (kept in the database) and,
  for each ``received``, ``dispatched``, ``dismissed``, ``reopened`` or ``closed``
  entry, and each linked report of another kind (it raises the priority), stores the
  CAP message of the alert *as it was then* (so the same entry always gives the same
  message, whoever builds it) and one delivery per recipient, and moves
  the cursor, in one transaction. A crash before the commit leaves the cursor where it
  was; the next run builds the same messages (same identifiers) and the unique keys keep
  one of each. Two ENC processes on one database: the cursor moves only from where the
  transaction read it, so one of them wins and the other finds nothing new.
- ``CapOutbox.claim`` hands out, per recipient, the oldest message not yet delivered
  (in order: an update never overtakes its alert), when its retry time has come, and
  leases it (``next_at`` moved past the request's timeout) so that no other process
  sends it meanwhile.
- ``CapSender.run`` POSTs (``Content-Type: application/cap+xml``); a 2xx answer marks
  the delivery done; anything else (an error status, a refused connection, a timeout)
  is written down and retried after ``retry_first_seconds``, doubling up to
  ``retry_max_seconds``, for ever: nothing is dropped. A recipient that accepted a
  message whose acknowledgement was lost gets it again (at least once): the CAP
  identifier tells it so.

The photo goes as a resource whose ``uri`` a recipient fetches without an operator's
login: ``<public_url>/cap/photo/<incident>.jpg?token=<expiry>.<mac>``, an HMAC under a
key kept (sealed) in the database, valid ``photo_token_hours`` after the message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import httpx
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError

from ._cap import CAP_NAMESPACE, cap_message, cap_report, cap_time, is_cap_change
from ._config import CapRecipient, CapSection
from ._errors import NotFound, StoreError
from ._linked import linked_photo
from ._schema import CapCursorRow, CapDeliveryRow, CapMessageRow, SettingRow
from ._store import AlertStatus, AlertStore, AuditEntry

__all__ = ["CAP_CONTENT_TYPE", "CapDelivery", "CapMessage", "CapOutbox", "CapSender", "atom_feed"]

log = logging.getLogger("citywatch.enc.cap")

CAP_CONTENT_TYPE = "application/cap+xml"
_CURSOR = "cap"
_TOKEN_KEY = "cap_photo_token_key"
_STATUS_AFTER = {
    "received": AlertStatus.NEW,
    "dispatched": AlertStatus.DISPATCHED,
    "dismissed": AlertStatus.DISMISSED,
    "reopened": AlertStatus.NEW,
    "closed": AlertStatus.CLOSED,
}
"""Status changes that make a CAP message, and the alert's status after each (a linked
report of another kind makes one too, ``is_cap_change``)."""
_OTHER_STATUS = {
    "acknowledged": AlertStatus.ACKNOWLEDGED,
    "put_on_hold": AlertStatus.ON_HOLD,
    "resumed": AlertStatus.ACKNOWLEDGED,
    "released": AlertStatus.NEW,
}
"""Status changes that make no CAP message of their own."""


@dataclass(frozen=True, slots=True)
class CapMessage:
    """One CAP message as stored (and as sent to every recipient)."""

    identifier: str
    incident_id: str
    audit_id: int
    """The audit entry it stands for."""
    sent_at: int
    """Its ``sent``, ms."""
    msg_type: str
    xml: bytes


@dataclass(frozen=True, slots=True)
class CapDelivery:
    """One message to one recipient, claimed for a send."""

    id: int
    recipient: str
    identifier: str
    attempts: int
    """Sends tried before this one."""


class CapOutbox:
    """The CAP messages and their deliveries, in the alert store's database."""

    def __init__(
        self, store: AlertStore, settings: CapSection, *, recipients: tuple[str, ...] | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.recipients = tuple(sorted(settings.recipients)) if recipients is None else recipients
        self._token_key: bytes | None = None

    # -- messages from the audit trail ----------------------------------------------

    def follow(self, *, batch: int = 200) -> int:
        """Turn the audit entries after the cursor into messages and deliveries; how
        many messages were made."""
        made = 0
        clashes = 0
        while True:
            with self.store.transaction(write=True) as s:
                row = s.get(CapCursorRow, _CURSOR)
                if row is None:
                    s.add(CapCursorRow(name=_CURSOR, audit_id=0))
                    s.flush()
                    cursor = 0
                else:
                    cursor = row.audit_id
            entries = self.store.audit_since(cursor, limit=batch)
            if not entries:
                return made
            wanted = [
                e
                for e in entries
                if e.incident_id is not None and (e.action == "received" or is_cap_change(e))
            ]
            messages = [m for m in (self._message_for(e) for e in wanted) if m is not None]
            try:
                with self.store.transaction(write=True) as s:
                    moved = cast(
                        CursorResult[Any],
                        s.execute(
                            update(CapCursorRow)
                            .where(CapCursorRow.name == _CURSOR, CapCursorRow.audit_id == cursor)
                            .values(audit_id=entries[-1].id)
                            .execution_options(synchronize_session=False)
                        ),
                    ).rowcount
                    if moved != 1:
                        continue  # another process moved it: read again from there
                    for m in messages:
                        if s.get(CapMessageRow, m.identifier) is not None:
                            continue
                        s.add(
                            CapMessageRow(
                                identifier=m.identifier,
                                incident_id=m.incident_id,
                                audit_id=m.audit_id,
                                sent_at=m.sent_at,
                                msg_type=m.msg_type,
                                body=self.store.seal_record(m.xml, _aad(m.identifier)),
                            )
                        )
                        s.flush()  # the deliveries' foreign key needs the message first
                        for r in self.recipients:
                            s.add(
                                CapDeliveryRow(
                                    identifier=m.identifier,
                                    recipient=r,
                                    created_at=m.sent_at,
                                    attempts=0,
                                    next_at=0,
                                    delivered_at=None,
                                    last_error=None,
                                )
                            )
                    made += len(messages)
            except IntegrityError as exc:
                # Another process stored the same messages first: read again. More than
                # a few times in a row is no race but a fault.
                clashes += 1
                if clashes > 3:
                    raise StoreError(f"CAP messages cannot be stored: {exc.orig}") from None
                continue
            if len(entries) < batch:
                return made

    def _message_for(self, entry: AuditEntry) -> CapMessage | None:
        assert entry.incident_id is not None
        try:
            alert = self.store.alert(entry.incident_id)
        except NotFound:
            return None  # purged since
        photo: bytes | None
        try:
            photo = self.store.photo(entry.incident_id)
        except NotFound:
            photo = None  # a dismissed alert's photo, purged
        trail = [e for e in self.store.audit_trail(entry.incident_id) if e.id <= entry.id]
        then = dataclasses.replace(alert, status=_status_then(trail), status_at=entry.at)
        uri = self.photo_uri(alert.incident_id, at=entry.at) if photo is not None else None
        # An Update for a linked report carries that report's photo (with its own token).
        rep = cap_report(trail)
        report_photo: bytes | None = None
        try:
            report_photo = linked_photo(self.store, alert.incident_id, rep) if rep else None
        except NotFound:
            rep = None  # a report that stands as its own alert has its own messages
        xml = cap_message(
            then,
            trail,
            self.settings,
            photo=photo,
            photo_uri=uri,
            report_photo=report_photo,
            report_photo_uri=(
                self.photo_uri(alert.incident_id, at=entry.at, report_id=rep)
                if report_photo is not None and rep
                else None
            ),
        )
        root = ET.fromstring(xml)
        ns = {"cap": CAP_NAMESPACE}
        return CapMessage(
            identifier=root.findtext("cap:identifier", namespaces=ns) or "",
            incident_id=alert.incident_id,
            audit_id=entry.id,
            sent_at=entry.at,
            msg_type=root.findtext("cap:msgType", namespaces=ns) or "",
            xml=xml,
        )

    def messages(self, *, limit: int = 50, incident_id: str | None = None) -> list[CapMessage]:
        """Stored messages, newest first."""
        q = select(CapMessageRow).order_by(CapMessageRow.audit_id.desc()).limit(limit)
        if incident_id is not None:
            q = q.where(CapMessageRow.incident_id == incident_id)
        with self.store.transaction(write=False) as s:
            return [self._view(r) for r in s.scalars(q)]

    def message(self, identifier: str) -> CapMessage:
        with self.store.transaction(write=False) as s:
            r = s.get(CapMessageRow, identifier)
            if r is None:
                raise NotFound(f"no CAP message {identifier!r}")
            return self._view(r)

    def _view(self, r: CapMessageRow) -> CapMessage:
        return CapMessage(
            identifier=r.identifier,
            incident_id=r.incident_id,
            audit_id=r.audit_id,
            sent_at=r.sent_at,
            msg_type=r.msg_type,
            xml=self.store.open_record(bytes(r.body), _aad(r.identifier)),
        )

    # -- deliveries -------------------------------------------------------------------

    def claim(self, *, now: int, lease_ms: int) -> list[CapDelivery]:
        """Per recipient, its oldest undelivered message if due, leased to the caller."""
        out = []
        with self.store.transaction(write=True) as s:
            for recipient in self.recipients:
                head = s.scalars(
                    select(CapDeliveryRow)
                    .join(CapMessageRow, CapMessageRow.identifier == CapDeliveryRow.identifier)
                    .where(
                        CapDeliveryRow.recipient == recipient, CapDeliveryRow.delivered_at.is_(None)
                    )
                    .order_by(CapMessageRow.audit_id)
                    .limit(1)
                ).first()
                if head is None or head.next_at > now:
                    continue
                taken = cast(
                    CursorResult[Any],
                    s.execute(
                        update(CapDeliveryRow)
                        .where(
                            CapDeliveryRow.id == head.id,
                            CapDeliveryRow.next_at == head.next_at,
                            CapDeliveryRow.delivered_at.is_(None),
                        )
                        .values(next_at=now + lease_ms)
                        .execution_options(synchronize_session=False)
                    ),
                ).rowcount
                if taken == 1:
                    out.append(
                        CapDelivery(
                            id=head.id,
                            recipient=recipient,
                            identifier=head.identifier,
                            attempts=head.attempts,
                        )
                    )
        return out

    def delivered(self, d: CapDelivery, *, now: int, status: int) -> None:
        with self.store.transaction(write=True) as s:
            s.execute(
                update(CapDeliveryRow)
                .where(CapDeliveryRow.id == d.id)
                .values(
                    delivered_at=now, attempts=d.attempts + 1, last_status=status, last_error=None
                )
                .execution_options(synchronize_session=False)
            )

    def failed(self, d: CapDelivery, *, now: int, error: str, status: int | None) -> int:
        """Written down; when it is tried again (ms)."""
        first = self.settings.retry_first_seconds * 1000
        wait = int(min(self.settings.retry_max_seconds * 1000, first * 2 ** min(d.attempts, 30)))
        with self.store.transaction(write=True) as s:
            s.execute(
                update(CapDeliveryRow)
                .where(CapDeliveryRow.id == d.id)
                .values(
                    attempts=d.attempts + 1,
                    next_at=now + wait,
                    last_status=status,
                    last_error=error[:200],
                )
                .execution_options(synchronize_session=False)
            )
        return now + wait

    def pending(self) -> dict[str, int]:
        """Undelivered messages per recipient."""
        q = (
            select(CapDeliveryRow.recipient, func.count())
            .where(CapDeliveryRow.delivered_at.is_(None))
            .group_by(CapDeliveryRow.recipient)
        )
        with self.store.transaction(write=False) as s:
            counts = dict.fromkeys(self.recipients, 0)
            counts.update({str(r): int(n) for r, n in s.execute(q)})
            return counts

    def deliveries(self, incident_id: str) -> list[dict[str, Any]]:
        """Each message of an alert to each recipient: delivered or not, tries."""
        q = (
            select(CapDeliveryRow, CapMessageRow.audit_id)
            .join(CapMessageRow, CapMessageRow.identifier == CapDeliveryRow.identifier)
            .where(CapMessageRow.incident_id == incident_id)
            .order_by(CapMessageRow.audit_id, CapDeliveryRow.recipient)
        )
        with self.store.transaction(write=False) as s:
            return [
                {
                    "identifier": d.identifier,
                    "recipient": d.recipient,
                    "delivered_at": d.delivered_at,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                }
                for d, _ in s.execute(q)
            ]

    # -- the photo's token ------------------------------------------------------------

    def _key(self) -> bytes:
        if self._token_key is None:
            with self.store.transaction(write=True) as s:
                row = s.get(SettingRow, _TOKEN_KEY)
                if row is None:
                    key = secrets.token_bytes(32)
                    s.add(
                        SettingRow(
                            name=_TOKEN_KEY, value=self.store.seal_record(key, _aad(_TOKEN_KEY))
                        )
                    )
                else:
                    key = self.store.open_record(bytes(row.value), _aad(_TOKEN_KEY))
            self._token_key = key
        return self._token_key

    def photo_token(self, incident_id: str, *, expires_s: int, report_id: str | None = None) -> str:
        """A token for the alert's photo, or for one of its linked reports' (ids are
        printable, so the newlines keep the two kinds apart)."""
        what = f"photo\n{incident_id}" + (f"\nreport\n{report_id}" if report_id else "")
        mac = hmac.new(self._key(), f"{what}\n{expires_s}".encode(), hashlib.sha256).digest()
        return f"{expires_s}.{base64.urlsafe_b64encode(mac[:24]).decode()}"

    def check_photo_token(
        self, incident_id: str, token: str, *, now: int, report_id: str | None = None
    ) -> bool:
        expiry, _, _mac = token.partition(".")
        if not expiry.isdigit() or len(expiry) > 12:
            return False
        good = hmac.compare_digest(
            self.photo_token(incident_id, expires_s=int(expiry), report_id=report_id), token
        )
        return good and int(expiry) * 1000 > now

    def photo_uri(self, incident_id: str, *, at: int, report_id: str | None = None) -> str | None:
        base = self.settings.public_url.rstrip("/")
        if not base:
            return None
        expires = (at + int(self.settings.photo_token_hours * 3600_000)) // 1000
        path = f"{base}/cap/photo/{quote(incident_id, safe='')}"
        if report_id:
            path += f"/{quote(report_id, safe='')}"
        token = self.photo_token(incident_id, expires_s=expires, report_id=report_id)
        return f"{path}.jpg?token={token}"


def _status_then(trail: list[AuditEntry]) -> AlertStatus:
    """The alert's status after the last of these entries."""
    status = AlertStatus.NEW
    for e in trail:
        if e.action in _STATUS_AFTER:
            status = _STATUS_AFTER[e.action]
        elif e.action in _OTHER_STATUS:
            status = _OTHER_STATUS[e.action]
        elif e.action == "assigned" and status is AlertStatus.NEW:
            status = AlertStatus.ACKNOWLEDGED
    return status


def _aad(name: str) -> bytes:
    return f"citywatch enc cap {name}".encode()


class CapSender:
    """Sends what ``CapOutbox`` hands out, for the life of the ENC."""

    def __init__(
        self,
        outbox: CapOutbox,
        recipients: dict[str, CapRecipient],
        *,
        clock: Callable[[], int],
        headers: dict[str, dict[str, str]] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.outbox = outbox
        self.recipients = recipients
        self.clock = clock
        self.headers = headers or {}
        self.on_change = on_change
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Something may have changed: look now rather than at the next tick."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, tick_s: float = 0.5) -> None:
        timeout = (
            max(r.timeout_seconds for r in self.recipients.values()) if (self.recipients) else 10.0
        )
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
            while not stop.is_set():
                try:
                    await self.once(http, lease_ms=int(timeout * 1000) + 5000)
                except StoreError as exc:
                    log.error("CAP delivery: the store failed, retrying: %s", exc)
                except Exception:  # keep sending whatever one message did
                    log.exception("CAP delivery failed unexpectedly; retrying")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), tick_s)

    async def once(self, http: httpx.AsyncClient, *, lease_ms: int) -> int:
        """Follow the trail and send what is due; how many were delivered."""
        made = await asyncio.to_thread(self.outbox.follow)
        if made:
            self.on_change()
        claimed = await asyncio.to_thread(self.outbox.claim, now=self.clock(), lease_ms=lease_ms)
        results = await asyncio.gather(*(self._send(http, d) for d in claimed))
        return sum(results)

    async def _send(self, http: httpx.AsyncClient, d: CapDelivery) -> bool:
        r = self.recipients[d.recipient]
        m = await asyncio.to_thread(self.outbox.message, d.identifier)
        headers = {"Content-Type": CAP_CONTENT_TYPE, **self.headers.get(d.recipient, {})}
        status: int | None = None
        try:
            answer = await http.post(
                r.url, content=m.xml, headers=headers, timeout=r.timeout_seconds
            )
            status = answer.status_code
            if 200 <= status < 300:
                await asyncio.to_thread(self.outbox.delivered, d, now=self.clock(), status=status)
                log.info(
                    "CAP %s delivered to %s (try %d)", d.identifier, d.recipient, d.attempts + 1
                )
                return True
            error = f"answered {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        retry = await asyncio.to_thread(
            self.outbox.failed, d, now=self.clock(), error=error, status=status
        )
        log.warning(
            "CAP %s to %s not delivered (%s); try %d again at %s",
            d.identifier,
            d.recipient,
            error,
            d.attempts + 2,
            cap_time(retry),
        )
        return False


def atom_feed(
    messages: list[CapMessage], *, base_url: str, sender: str, title: str, now: int
) -> bytes:
    """An Atom 1.0 feed (RFC 4287) of CAP messages, newest first: each entry links to
    its message and carries it whole as its content."""
    atom = "http://www.w3.org/2005/Atom"
    ET.register_namespace("", atom)
    ET.register_namespace("cap", CAP_NAMESPACE)
    a = "{" + atom + "}"

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        e = ET.SubElement(parent, a + tag, attrs)
        if text is not None:
            e.text = text
        return e

    def when(ms: int) -> str:
        return cap_time(ms).replace("-00:00", "Z")

    feed = ET.Element(a + "feed")
    sub(feed, "id", f"urn:citywatch:cap-feed:{sender}")
    sub(feed, "title", title)
    sub(feed, "updated", when(messages[0].sent_at if messages else now))
    author = sub(feed, "author")
    sub(author, "name", sender)
    sub(feed, "link", rel="self", href=f"{base_url}/cap/feed.atom")
    ns = {"cap": CAP_NAMESPACE}
    for m in messages:
        root = ET.fromstring(m.xml)
        e = sub(feed, "entry")
        sub(e, "id", f"urn:citywatch:cap:{m.identifier}")
        headline = root.findtext("cap:info/cap:headline", namespaces=ns) or m.identifier
        sub(e, "title", f"{m.msg_type}: {headline}")
        sub(e, "updated", when(m.sent_at))
        sub(
            e,
            "link",
            rel="alternate",
            type=CAP_CONTENT_TYPE,
            href=f"{base_url}/cap/messages/{quote(m.identifier, safe='')}.xml",
        )
        content = sub(e, "content", type=CAP_CONTENT_TYPE)
        content.append(root)
    ET.indent(feed)
    out: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return out + b"\n"
