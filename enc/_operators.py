"""Operators of the dashboard: accounts (argon2id password hashes), lock-out after
repeated failures, and sessions (the cookie holds a random token; the database keeps
only its SHA-256, with the session's CSRF token and expiry)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from ._config import DashboardSection
from ._errors import ActionRefused, LoginRefused, NotFound
from ._handling import Role
from ._schema import OperatorRow, SessionRow
from ._store import AlertStore

__all__ = ["MIN_PASSWORD_LENGTH", "Operator", "OperatorDirectory", "Session"]

MIN_PASSWORD_LENGTH = 10
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_REFUSED = "wrong name or password, or the account is locked or disabled"


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


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _operator(r: OperatorRow) -> Operator:
    return Operator(r.username, Role(r.role), r.disabled, r.locked_until)


class OperatorDirectory:
    """Accounts and sessions, in the ENC's store."""

    def __init__(self, store: AlertStore, settings: DashboardSection, *,
                 hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.settings = settings
        # argon2id with the library's defaults (RFC 9106 low-memory profile); tests pass
        # a cheaper argon2id so that they stay fast.
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

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
            raise ActionRefused("a user name is 1-64 characters: lowercase letters, digits, "
                                "'.', '_' or '-', starting with a letter or digit")
        return username

    @staticmethod
    def check_password(password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ActionRefused(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
        if len(password) > 1024:
            raise ActionRefused("a password has at most 1024 characters")

    def add(self, username: str, password: str, role: Role | str, *, now: int,
            by: str = "cli") -> Operator:
        self.check_username(username)
        self.check_password(password)
        row = OperatorRow(username=username, password_hash=self._hasher.hash(password),
                          role=Role(role).value, disabled=False, failed_logins=0,
                          locked_until=None, created_at=now, password_changed_at=now)
        with self.store.transaction(write=True) as s:
            if s.get(OperatorRow, username) is not None:
                raise ActionRefused(f"operator {username!r} exists already")
            s.add(row)
            self.store.audit(s, at=now, incident_id=None, actor=by, action="operator_added",
                             detail={"username": username, "role": row.role})
        return _operator(row)

    def get(self, username: str) -> Operator:
        with self.store.transaction(write=False) as s:
            r = s.get(OperatorRow, username)
            if r is None:
                raise NotFound(f"no operator {username!r}")
            return _operator(r)

    def list(self) -> list[Operator]:
        with self.store.transaction(write=False) as s:
            return [_operator(r) for r in s.scalars(select(OperatorRow)
                                                    .order_by(OperatorRow.username))]

    def set_disabled(self, username: str, disabled: bool, *, now: int, by: str = "cli") -> None:
        with self.store.transaction(write=True) as s:
            r = s.get(OperatorRow, username)
            if r is None:
                raise NotFound(f"no operator {username!r}")
            r.disabled = disabled
            if disabled:
                s.execute(delete(SessionRow).where(SessionRow.username == username))
            self.store.audit(s, at=now, incident_id=None, actor=by,
                             action="operator_disabled" if disabled else "operator_enabled",
                             detail={"username": username})

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
            self.store.audit(s, at=now, incident_id=None, actor=by,
                             action="password_changed", detail={"username": username})

    # -- login and sessions -------------------------------------------------------

    def login(self, username: str, password: str, *, now: int,
              peer: str = "?") -> tuple[str, Session]:
        """Check the password; return a new session token (for the cookie) and the
        session. ``LoginRefused`` says the same thing whatever was wrong."""
        username = username.strip().lower()[:64]
        s_ = self.settings
        # A refusal is recorded (failure count, lock-out, audit) and committed before it
        # is raised, so it happens outside the transaction.
        with self.store.transaction(write=True) as s:
            r = s.get(OperatorRow, username) if _USERNAME.match(username) else None
            refusal: dict[str, object] | None = None
            if r is None:
                self._verify(self._dummy_hash, password)
                refusal = {"reason": "unknown name"}
            elif r.disabled or (r.locked_until is not None and r.locked_until > now):
                self._verify(self._dummy_hash, password)
                refusal = {"reason": "disabled" if r.disabled else "locked"}
            elif not self._verify(r.password_hash, password):
                r.failed_logins += 1
                refusal = {"reason": "password", "failures": r.failed_logins}
                if r.failed_logins >= s_.lockout_failures:
                    r.locked_until = now + s_.lockout_minutes * 60_000
                    r.failed_logins = 0
                    refusal["locked_until"] = r.locked_until
            if refusal is not None or r is None:
                self.store.audit(s, at=now, incident_id=None,
                                 actor=username if r is not None else "anonymous",
                                 action="login_failed", detail={"peer": peer, **(refusal or {})})
                session = None
            else:
                if self._hasher.check_needs_rehash(r.password_hash):
                    r.password_hash = self._hasher.hash(password)
                r.failed_logins = 0
                r.locked_until = None
                token = secrets.token_urlsafe(32)
                row = SessionRow(token_hash=_token_hash(token), username=username,
                                 csrf=secrets.token_urlsafe(32), created_at=now, last_seen=now,
                                 expires_at=now + s_.session_lifetime_minutes * 60_000)
                s.add(row)
                self.store.audit(s, at=now, incident_id=None, actor=username, action="login",
                                 detail={"peer": peer})
                session = Session(_operator(r), row.csrf, row.expires_at, row.token_hash)
        if session is None:
            raise LoginRefused(_REFUSED)
        return token, session

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
            self.store.audit(s, at=now, incident_id=None, actor=session.operator.username,
                             action="logout", detail={})

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(session.csrf.encode(),
                                                       (presented or "").encode())
