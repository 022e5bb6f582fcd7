"""Operators of the dashboard: accounts (argon2id password hashes), a back-off after
repeated failures (per address and per account, never a lock-out), and sessions (the
cookie holds a random token; the database keeps only its SHA-256, with the session's
CSRF token and expiry).

A password is checked outside any database transaction: argon2id takes a large share of
a core for a good fraction of a second, and the ENC's SQLite writers (alert intake among
them) share one lock."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from ._config import DashboardSection
from ._errors import ActionRefused, LoginRefused, LoginThrottled, NotFound
from ._handling import Role
from ._schema import OperatorRow, SessionRow
from ._store import AlertStore

__all__ = ["MIN_PASSWORD_LENGTH", "LoginThrottle", "Operator", "OperatorDirectory", "Session"]

MIN_PASSWORD_LENGTH = 10
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_REFUSED = "wrong name or password, or the account is disabled"
_THROTTLED = "too many failed logins: wait a little and try again"
# Failed logins of one actor from one address share an audit row for this long.
_AUDIT_SUMMARY_MS = 10 * 60_000


@dataclass(frozen=True, slots=True)
class Operator:
    """An operator account (never the hash)."""

    username: str
    """Login name, lowercase."""
    role: Role
    """operator or supervisor."""
    disabled: bool
    """A disabled account cannot log in; its sessions are ended."""
    locked_until: int | None
    """Locked out until then (ms), after too many failed logins."""


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in operator, as seen by one request."""

    operator: Operator
    """Who."""
    csrf: str
    """The token every state-changing request must carry."""
    expires_at: int
    """Absolute end, ms."""
    token_hash: str
    """SHA-256 of the cookie's token, hex (the row's key)."""


class _Strikes:
    __slots__ = ("failures", "not_before")

    def __init__(self) -> None:
        self.failures = 0
        self.not_before = 0


class LoginThrottle:
    """Back-off after failed logins, kept in memory, bounded in size.

    Every address and every account name may fail ``free`` times; after that each further
    failure doubles the wait before the next attempt from that address (up to
    ``address_max_ms``) or for that account (up to ``account_max_ms``, short: the real
    operator is slowed, never locked out). An address that logged in as an account before
    skips both back-offs for that account: an attacker elsewhere cannot keep its operator
    out, nor can a colleague's typos behind the control room's one address. A success
    clears both."""

    def __init__(
        self,
        *,
        free: int,
        address_max_ms: int,
        account_max_ms: int = 30_000,
        base_ms: int = 1_000,
        capacity: int = 10_000,
    ) -> None:
        self.free, self.base_ms, self.capacity = free, base_ms, capacity
        self.address_max_ms, self.account_max_ms = address_max_ms, account_max_ms
        self._addresses: OrderedDict[str, _Strikes] = OrderedDict()
        self._accounts: OrderedDict[str, _Strikes] = OrderedDict()
        self._trusted: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def wait_ms(self, address: str, account: str, now: int) -> int:
        """How long ``address`` must wait before trying ``account``; 0: go ahead."""
        with self._lock:
            if (address, account) in self._trusted:
                return 0
            wait = 0
            if (a := self._addresses.get(address)) is not None:
                wait = a.not_before - now
            if (c := self._accounts.get(account)) is not None:
                wait = max(wait, c.not_before - now)
            return max(0, wait)

    def failed(self, address: str, account: str, now: int) -> None:
        with self._lock:
            self._strike(self._addresses, address, now, self.address_max_ms)
            self._strike(self._accounts, account, now, self.account_max_ms)

    def succeeded(self, address: str, account: str) -> None:
        with self._lock:
            self._addresses.pop(address, None)
            self._accounts.pop(account, None)
            self._trusted[(address, account)] = None
            self._trusted.move_to_end((address, account))
            while len(self._trusted) > self.capacity:
                self._trusted.popitem(last=False)

    def _strike(self, table: OrderedDict[str, _Strikes], key: str, now: int, cap: int) -> None:
        st = table.get(key)
        if st is None:
            st = table[key] = _Strikes()
            while len(table) > self.capacity:
                table.popitem(last=False)
        table.move_to_end(key)
        st.failures += 1
        over = st.failures - self.free
        if over > 0:
            st.not_before = now + min(cap, self.base_ms * 2 ** min(over - 1, 30))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _operator(r: OperatorRow) -> Operator:
    return Operator(r.username, Role(r.role), r.disabled, r.locked_until)


class OperatorDirectory:
    """Accounts and sessions, in the ENC's store."""

    def __init__(
        self, store: AlertStore, settings: DashboardSection, *, hasher: PasswordHasher | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        # argon2id with the library's defaults (RFC 9106 low-memory profile); tests pass
        # a cheaper argon2id so that they stay fast.
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self.throttle = LoginThrottle(
            free=settings.lockout_failures, address_max_ms=settings.lockout_minutes * 60_000
        )
        # Failed logins not yet written to the audit: (actor, peer) -> (count, first at,
        # last row at). One row per pair and period, with the count, instead of one each.
        self._failures: dict[tuple[str, str], tuple[int, int, int]] = {}
        self._failures_lock = threading.Lock()

    @property
    def _dummy_hash(self) -> str:
        """Verified against when the name is unknown, so that the answer takes as long."""
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_hex(16))
        return self._dummy

    # -- accounts -----------------------------------------------------------------

    @staticmethod
    def check_username(username: str) -> str:
        if not _USERNAME.match(username):
            raise ActionRefused(
                "a user name is 1-64 characters: lowercase letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        return username

    @staticmethod
    def check_password(password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ActionRefused(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
        if len(password) > 1024:
            raise ActionRefused("a password has at most 1024 characters")

    def add(
        self, username: str, password: str, role: Role | str, *, now: int, by: str = "cli"
    ) -> Operator:
        self.check_username(username)
        self.check_password(password)
        row = OperatorRow(
            username=username,
            password_hash=self._hasher.hash(password),
            role=Role(role).value,
            disabled=False,
            failed_logins=0,
            locked_until=None,
            created_at=now,
            password_changed_at=now,
        )
        with self.store.transaction(write=True) as s:
            if s.get(OperatorRow, username) is not None:
                raise ActionRefused(f"operator {username!r} exists already")
            s.add(row)
            self.store.audit(
                s,
                at=now,
                incident_id=None,
                actor=by,
                action="operator_added",
                detail={"username": username, "role": row.role},
            )
        return _operator(row)

    def get(self, username: str) -> Operator:
        with self.store.transaction(write=False) as s:
            r = s.get(OperatorRow, username)
            if r is None:
                raise NotFound(f"no operator {username!r}")
            return _operator(r)

    def list(self) -> list[Operator]:
        with self.store.transaction(write=False) as s:
            return [
                _operator(r) for r in s.scalars(select(OperatorRow).order_by(OperatorRow.username))
            ]

    def set_disabled(self, username: str, disabled: bool, *, now: int, by: str = "cli") -> None:
        with self.store.transaction(write=True) as s:
            r = s.get(OperatorRow, username)
            if r is None:
                raise NotFound(f"no operator {username!r}")
            r.disabled = disabled
            if disabled:
                s.execute(delete(SessionRow).where(SessionRow.username == username))
            self.store.audit(
                s,
                at=now,
                incident_id=None,
                actor=by,
                action="operator_disabled" if disabled else "operator_enabled",
                detail={"username": username},
            )

    def set_password(self, username: str, password: str, *, now: int, by: str = "cli") -> None:
        """New password; also lifts a lock-out and ends the operator's sessions."""
        self.check_password(password)
        with self.store.transaction(write=True) as s:
            r = s.get(OperatorRow, username)
            if r is None:
                raise NotFound(f"no operator {username!r}")
            r.password_hash = self._hasher.hash(password)
            r.password_changed_at = now
            r.failed_logins = 0
            r.locked_until = None
            s.execute(delete(SessionRow).where(SessionRow.username == username))
            self.store.audit(
                s,
                at=now,
                incident_id=None,
                actor=by,
                action="password_changed",
                detail={"username": username},
            )

    # -- login and sessions -------------------------------------------------------

    def login(
        self, username: str, password: str, *, now: int, peer: str = "?"
    ) -> tuple[str, Session]:
        """Check the password; return a new session token (for the cookie) and the
        session. ``LoginRefused`` says the same thing whatever was wrong;
        ``LoginThrottled`` that the address or account must wait first."""
        username = username.strip().lower()[:64]
        known_name = bool(_USERNAME.match(username))
        wait = self.throttle.wait_ms(peer, username, now)
        if wait > 0:
            self._record_failure("anonymous", peer, now, {"reason": "throttled"})
            raise LoginThrottled(_THROTTLED, retry_after_s=-(-wait // 1000))
        # Read, check the password with no transaction open, then write the outcome in a
        # short transaction that looks at the row again.
        with self.store.transaction(write=False) as s:
            r = s.get(OperatorRow, username) if known_name else None
            seen = None if r is None else (r.password_hash, r.disabled, r.password_changed_at)
        if seen is None or seen[1]:
            self._verify(self._dummy_hash, password)
            ok = False
        else:
            ok = self._verify(seen[0], password)
        rehash = (
            self._hasher.hash(password)
            if ok and self._hasher.check_needs_rehash(seen[0])  # type: ignore[index]
            else None
        )
        if not ok:
            self.throttle.failed(peer, username, now)
            reason = "unknown name" if seen is None else "disabled" if seen[1] else "password"
            self._record_failure(
                username if seen is not None else "anonymous", peer, now, {"reason": reason}
            )
            raise LoginRefused(_REFUSED)
        s_ = self.settings
        with self.store.transaction(write=True) as s:
            r = s.get(OperatorRow, username)
            if r is None or r.disabled or r.password_changed_at != seen[2]:  # type: ignore[index]
                session = None  # changed while the password was being checked
            else:
                if rehash is not None:
                    r.password_hash = rehash
                r.failed_logins = 0
                r.locked_until = None
                token = secrets.token_urlsafe(32)
                row = SessionRow(
                    token_hash=_token_hash(token),
                    username=username,
                    csrf=secrets.token_urlsafe(32),
                    created_at=now,
                    last_seen=now,
                    expires_at=now + s_.session_lifetime_minutes * 60_000,
                )
                s.add(row)
                detail: dict[str, object] = {"peer": peer}
                failed = self._take_failures(username, peer)
                if failed:
                    detail["failed_before"] = failed
                self.store.audit(
                    s, at=now, incident_id=None, actor=username, action="login", detail=detail
                )
                session = Session(_operator(r), row.csrf, row.expires_at, row.token_hash)
        if session is None:
            raise LoginRefused(_REFUSED)
        self.throttle.succeeded(peer, username)
        return token, session

    def _record_failure(self, actor: str, peer: str, now: int, detail: dict[str, object]) -> None:
        """Audit a failed login, summarised: the first of a period gets a row; the
        others are counted into the next row of the period after (or the login)."""
        key = (actor, peer)
        with self._failures_lock:
            count, first, last_row = self._failures.get(key, (0, now, 0))
            count += 1
            if now - last_row < _AUDIT_SUMMARY_MS:
                self._failures[key] = (count, first, last_row)
                return
            self._failures[key] = (0, now, now)
            if len(self._failures) > 10_000:  # forget the oldest summaries, bounded
                for k in list(self._failures)[:1_000]:
                    del self._failures[k]
        self.store.append_audit(
            at=now,
            actor=actor,
            action="login_failed",
            incident_id=None,
            detail={"peer": peer, "count": count, "since": first, **detail},
        )

    def _take_failures(self, actor: str, peer: str) -> int:
        with self._failures_lock:
            count, _, _ = self._failures.pop((actor, peer), (0, 0, 0))
            anonymous, _, _ = self._failures.pop(("anonymous", peer), (0, 0, 0))
        return count + anonymous

    def _verify(self, hash_: str, password: str) -> bool:
        try:
            return self._hasher.verify(hash_, password)
        except (VerificationError, InvalidHashError):
            return False

    def session(self, token: str | None, *, now: int, touch: bool = True) -> Session | None:
        """The live session for a cookie token, or None (unknown, expired, idle too long,
        or its operator disabled). ``touch`` records the activity."""
        if not token or len(token) > 128:
            return None
        th = _token_hash(token)
        idle_ms = self.settings.session_idle_minutes * 60_000
        with self.store.transaction(write=touch) as s:
            row = s.get(SessionRow, th)
            if row is None:
                return None
            op = s.get(OperatorRow, row.username)
            if op is None or op.disabled or now >= row.expires_at or now - row.last_seen >= idle_ms:
                if touch:
                    s.delete(row)
                return None
            # Touch at most every few seconds: the live feed asks often.
            if touch and now - row.last_seen > 5_000:
                row.last_seen = now
            return Session(_operator(op), row.csrf, row.expires_at, th)

    def logout(self, session: Session, *, now: int) -> None:
        with self.store.transaction(write=True) as s:
            s.execute(delete(SessionRow).where(SessionRow.token_hash == session.token_hash))
            self.store.audit(
                s,
                at=now,
                incident_id=None,
                actor=session.operator.username,
                action="logout",
                detail={},
            )

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            session.csrf.encode(), (presented or "").encode()
        )
