"""The ENC's configuration: one strict TOML file (``citywatch enc run --config enc.toml``).

Relative paths in the file are relative to the folder the file is in, so a config and
its data directory can be moved together. ``example_config()`` is the commented example
that ``citywatch enc config example`` prints; it runs as it is on one machine.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._errors import ConfigError

__all__ = [
    "CapSection",
    "DashboardSection",
    "DatabaseSection",
    "EncConfig",
    "HttpSection",
    "LimitsSection",
    "MetricsSection",
    "RetentionSection",
    "ServerKey",
    "ServerTrust",
    "StoreKeySection",
    "config_from_mapping",
    "example_config",
    "load_config",
]

_KID_HEX = re.compile(r"^[0-9a-f]{16}$")
# CAP 1.2: sender must not contain spaces, commas or restricted characters.
_CAP_SENDER = re.compile(r"^[^\s,&<]+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatabaseSection(_Section):
    """Where alerts, operators and the audit trail live."""

    url: str = ""
    """SQLAlchemy URL; empty means an SQLite file ``enc.sqlite3`` in the data directory.
    PostgreSQL: ``postgresql+psycopg://user@host/dbname``."""


class HttpSection(_Section):
    """The HTTP(S) listener: the alert endpoint and the dashboard."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8700
    """TCP port."""
    tls_cert: str = ""
    """PEM certificate chain; with ``tls_key``, the ENC speaks HTTPS."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


class ServerTrust(_Section):
    """A trusted server, known by its kid: the K_SENC key it shares with this ENC."""

    key_file: str
    """File holding K_SENC (16 or 32 bytes, raw or as hex text); must be mode 0600 or stricter."""
    name: str = ""
    """A name for people (shown in logs and the audit trail)."""


class LimitsSection(_Section):
    """Limits applied before anything is decrypted."""

    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 2 * 1024 * 1024 + 4096
    """Largest request body accepted by ``POST /v1/alerts`` (413 above it)."""
    max_photo_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 2 * 1024 * 1024
    """Largest photo inside an N1."""
    timestamp_window_seconds: Annotated[int, Field(ge=1, le=3600)] = 30
    """An N1's T_S is accepted within +/- this of the ENC's clock."""


class DashboardSection(_Section):
    """The operators' dashboard."""

    session_lifetime_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 12 * 60
    """A login lasts at most this long (a night shift), whatever the activity."""
    session_idle_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 60
    """A session with no request for this long ends."""
    escalate_after_seconds: Annotated[int, Field(ge=1, le=24 * 3600)] = 120
    """An alert nobody has taken after this long is shown as escalated."""
    lockout_failures: Annotated[int, Field(ge=1, le=100)] = 5
    """Failed logins an address (or an account name) may make before each further one
    doubles its wait, from 1 s. Never a lock-out: an account's wait is at most 30 s, and
    an address that logged in as the operator before skips it."""
    lockout_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 15
    """The longest wait of one address after repeated failures."""
    secure_cookies: bool | None = None
    """Mark cookies Secure; unset means "when the ENC speaks HTTPS"."""
    map_tile_url: str = ""
    """A tile server the operators' browsers can reach, as a template with {z}, {x} and
    {y} (``https://tiles.city.example/{z}/{x}/{y}.png``); empty: coordinates only."""
    max_form_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 64 * 1024
    """Largest request body the dashboard accepts (413 above it)."""
    escalate_taken_after_seconds: Annotated[int, Field(ge=1, le=24 * 3600)] = 600
    """An alert taken this long ago and neither dispatched nor dismissed is escalated
    (the supervisors are told on their screens)."""
    uncertain_below: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7
    """An alert scored below this is shown as uncertain, the lowest priority, whatever
    its label (the server's default threshold 0.6 plus its uncertainty band 0.1)."""
    sound_repeat_seconds: Annotated[int, Field(ge=2, le=600)] = 10
    """While an alert nobody has taken is on screen, its sound cue repeats this often."""
    time_zone: str = "UTC"
    """IANA time zone the dashboard shows times in, with its abbreviation
    (``Europe/Warsaw``)."""
    leaflet: bool = True
    """Draw the place on a Leaflet map (served by the ENC itself from
    ``enc/static/vendor``, where scripts/setup.sh installs it with npm): the alert, its
    accuracy circle and the other alerts on a plain background, or on ``map_tile_url``'s
    tiles when set. False, or Leaflet not installed: coordinates (and the 3x3 tiles)."""

    zones: dict[
        Annotated[str, Field(min_length=1, max_length=40)],
        Annotated[list[float], Field(min_length=4, max_length=4)],
    ] = {}
    """Named parts of the district the list and the audit filter by: name ->
    [south, west, north, east] in degrees (``"Old Town" = [52.22, 21.0, 52.25, 21.03]``).
    An alert is in the first zone, by name, whose box holds it."""

    @field_validator("zones")
    @classmethod
    def _boxes(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, (south, west, north, east) in v.items():
            if not (-90 <= south < north <= 90 and -180 <= west < east <= 180):
                raise ValueError(
                    f"zone {name!r}: [south, west, north, east] with south < "
                    "north and west < east, in degrees"
                )
        return dict(sorted(v.items()))

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Europe/Warsaw)") from None
        return v

    @field_validator("map_tile_url")
    @classmethod
    def _tiles(cls, v: str) -> str:
        if v and not (
            v.startswith(("https://", "http://")) and all(p in v for p in ("{z}", "{x}", "{y}"))
        ):
            raise ValueError("must be an http(s) URL template with {z}, {x} and {y}")
        return v


class CapRecipient(_Section):
    """Somewhere the ENC POSTs every CAP message to (``[cap.recipients.<name>]``)."""

    url: str
    """http(s) URL the messages are POSTed to (``Content-Type: application/cap+xml``)."""
    authorization_file: str = ""
    """A file (mode 0600) whose first line is sent as the ``Authorization`` header
    (``Bearer ...``); empty: none."""
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    """How long one POST may take before it counts as failed."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v


class CapSection(_Section):
    """CAP 1.2 export and delivery."""

    sender: str = "enc@citywatch.invalid"
    """CAP ``sender``: an identifier of this ENC (no spaces or commas)."""
    sender_name: str = "CityWatch Emergency Notification Center"
    """CAP ``senderName``."""
    min_radius_m: Annotated[float, Field(ge=1.0, le=100_000.0)] = 50.0
    """Radius of the CAP area circle when the fix is more accurate than this."""
    status: Literal["Actual", "Exercise", "Test"] = "Actual"
    """CAP ``status``: "Exercise" or "Test" for drills and demos."""
    restriction: str = "For emergency services only: contains a photo of a person."
    """CAP ``restriction`` (the scope is always "Restricted")."""
    public_url: str = ""
    """Base URL at which recipients reach this dashboard (CAP ``web``); empty: left out."""
    embed_photo: bool = True
    """Carry the photo itself in the CAP message (its resource's ``derefUri``, base64),
    so that a recipient who cannot reach this ENC still has it; false: size and digest
    only (and ``uri`` with ``public_url``)."""
    recipients: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], CapRecipient] = {}
    """Where every CAP message is sent, by name; none: messages are kept (the Atom feed
    and the exports) and sent nowhere."""
    retry_first_seconds: Annotated[float, Field(ge=0.05, le=3600)] = 2.0
    """A failed send is tried again after this long, then twice as long each time ..."""
    retry_max_seconds: Annotated[float, Field(ge=0.05, le=86400)] = 300.0
    """... up to this long between tries; it is never given up."""
    photo_token_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 24.0
    """The photo's ``uri`` in a sent message works without a login, with its token, for
    this long after the message."""
    feed_token_file: str = ""
    """A file (mode 0600) whose first line is the bearer token that reads the Atom feed
    (``/cap/feed.atom``) without an operator's login; empty: operators only."""

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if not _CAP_SENDER.match(v):
            raise ValueError("must not contain spaces, commas, '&' or '<' (CAP 1.2)")
        return v


class StoreKeySection(_Section):
    source: Literal["file", "pkcs11"] = "file"
    """Where the store key (photos and positions are sealed under it) is kept.
    ``"pkcs11"``: on disk only wrapped under a non-extractable key in a PKCS#11 token.
    ``"file"``: in clear in ``file`` (mode 0600), only where that is accepted."""
    file: str = "store.key"
    """``source = "file"``: the key (64 hex digits), created at first start if absent."""
    wrapped_file: str = "store.key.wrapped"
    """``source = "pkcs11"``: the key wrapped under the token key, created at first start."""
    module: str = ""
    """``source = "pkcs11"``: the token's PKCS#11 module; empty: SoftHSM2's."""
    token_label: Annotated[str, Field(min_length=1, max_length=32)] = "citywatch-enc"
    """``source = "pkcs11"``: label of the token."""
    pin_file: str = "token.pin"
    """``source = "pkcs11"``: file holding the token's user PIN (first line), mode 0600."""
    key_label: Annotated[str, Field(min_length=1, max_length=64)] = "citywatch-enc-kek"
    """``source = "pkcs11"``: label of the token key a new wrapped file is made under."""


class RetentionSection(_Section):
    """How long the ENC keeps what operators are done with; 0 keeps it for ever. A purge
    runs every ``purge_every_minutes`` (and by ``citywatch enc purge``); each is one
    ``purged`` audit entry (the audit trail itself is never purged)."""

    dismissed_photo_hours: Annotated[float, Field(ge=0)] = 24.0
    """Photos of alerts an operator dismissed (false alarms), this long after."""
    closed_alert_days: Annotated[float, Field(ge=0)] = 30.0
    """Alerts dispatched or dismissed, deleted with their photo this long after."""
    purge_every_minutes: Annotated[float, Field(gt=0)] = 15.0
    """How often the running ENC purges."""

    def periods_ms(self) -> tuple[int | None, int | None]:
        """(dismissed photos, closed alerts) in ms; None: kept for ever."""
        photo = int(self.dismissed_photo_hours * 3600_000) or None
        closed = int(self.closed_alert_days * 86400_000) or None
        return photo, closed


class MetricsSection(_Section):
    allow_from: list[Annotated[str, Field(min_length=1)]] = ["127.0.0.1/32", "::1/128"]
    """Networks whose requests ``GET /metrics`` answers; any other gets 404."""

    @field_validator("allow_from")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an address or network") from None
        return v

    def allows(self, host: str | None) -> bool:
        """Whether a client at ``host`` may read the metrics."""
        try:
            addr = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(net, strict=False) for net in self.allow_from)


class _FileModel(_Section):
    data_dir: str = "var/enc"
    """Folder for the SQLite database and anything else the ENC keeps."""
    database: DatabaseSection = DatabaseSection()
    http: HttpSection = HttpSection()
    servers: dict[str, ServerTrust] = {}
    """Trusted servers: kid (16 lowercase hex digits) -> key file."""
    limits: LimitsSection = LimitsSection()
    dashboard: DashboardSection = DashboardSection()
    cap: CapSection = CapSection()
    metrics: MetricsSection = MetricsSection()
    store_key: StoreKeySection = StoreKeySection()
    retention: RetentionSection = RetentionSection()

    @field_validator("servers")
    @classmethod
    def _kids(cls, v: dict[str, ServerTrust]) -> dict[str, ServerTrust]:
        for kid in v:
            if not _KID_HEX.match(kid):
                raise ValueError(f"server kid {kid!r} must be 16 lowercase hex digits")
        return v


@dataclass(frozen=True, slots=True)
class ServerKey:
    """The key K_SENC of a trusted server, loaded (the ENC accepts N1s sealed with it)."""

    kid: bytes
    """The server's kid (8 bytes)."""
    key: bytes = b""
    """K_SENC, 16 or 32 bytes."""
    name: str = ""
    """A name for people."""

    def __repr__(self) -> str:  # never print a key
        return f"ServerKey(kid={self.kid.hex()}, name={self.name!r})"


@dataclass(frozen=True, slots=True)
class EncConfig:
    """A loaded, checked configuration: paths absolute, keys read."""

    source: Path | None
    """The file it came from (None when built in code)."""
    data_dir: Path
    """Folder for the SQLite database."""
    database_url: str
    """SQLAlchemy URL."""
    http: HttpSection
    """Listener."""
    servers: tuple[ServerKey, ...]
    """Servers whose N1s are accepted."""
    limits: LimitsSection
    """Limits."""
    dashboard: DashboardSection
    """Dashboard."""
    cap: CapSection
    """CAP export."""
    metrics: MetricsSection
    """Who may read ``/metrics``."""
    store_key: StoreKeySection
    """Where the store key is kept; its paths are absolute here."""
    retention: RetentionSection
    """How long closed alerts and dismissed photos are kept."""

    @property
    def base_url(self) -> str:
        scheme = "https" if self.http.tls else "http"
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        return f"{scheme}://{host}:{self.http.port}"

    @property
    def secure_cookies(self) -> bool:
        s = self.dashboard.secure_cookies
        return self.http.tls if s is None else s


def example_config() -> str:
    """The commented example config (``citywatch enc config example``)."""
    return resources.files("enc").joinpath("example.toml").read_text(encoding="utf-8")


def _where(file: str, loc: tuple[Any, ...]) -> str:
    return f"{file}: {'.'.join(str(p) for p in loc) or '(top level)'}"


def load_config(path: str | os.PathLike[str]) -> EncConfig:
    """Read and check a config file; raise ``ConfigError`` naming the file and the key."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no such file (write one with `citywatch enc config example > enc.toml`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return config_from_mapping(raw, source=file)


def config_from_mapping(raw: dict[str, Any], *, source: Path | None) -> EncConfig:
    """Check a parsed config; relative paths are taken from ``source``'s folder."""
    name = str(source) if source else "<config>"
    try:
        m = _FileModel.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(name, e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(problems) from None
    base = source.resolve().parent if source else Path.cwd()

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    data_dir = resolve(m.data_dir)

    def resolve_in_data(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else data_dir / q

    url = m.database.url or f"sqlite:///{data_dir / 'enc.sqlite3'}"
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigError(
            f"{_where(name, ('database', 'url'))}: only SQLite and PostgreSQL URLs are supported"
        )
    http = m.http
    if bool(http.tls_cert) != bool(http.tls_key):
        raise ConfigError(
            f"{_where(name, ('http', 'tls_key'))}: set both tls_cert and tls_key, or neither"
        )
    if http.tls:
        for key in ("tls_cert", "tls_key"):
            p = resolve(getattr(http, key))
            if not p.is_file():
                raise ConfigError(f"{_where(name, ('http', key))}: no such file {p}")
        http = http.model_copy(
            update={"tls_cert": str(resolve(http.tls_cert)), "tls_key": str(resolve(http.tls_key))}
        )
    elif not _is_loopback(http.host):
        raise ConfigError(
            f"{_where(name, ('http', 'host'))}: plain HTTP is only allowed on "
            "a loopback address; set http.tls_cert and http.tls_key to listen on "
            f"{http.host}"
        )
    if m.limits.max_body_bytes < m.limits.max_photo_bytes:
        raise ConfigError(
            f"{_where(name, ('limits', 'max_body_bytes'))}: must be at least limits.max_photo_bytes"
        )
    servers = tuple(
        _load_server(kid, t, resolve(t.key_file), _where(name, ("servers", kid, "key_file")))
        for kid, t in sorted(m.servers.items())
    )
    cap = m.cap.model_copy(
        update={
            "feed_token_file": str(resolve(m.cap.feed_token_file)) if m.cap.feed_token_file else "",
            "recipients": {
                name: r.model_copy(
                    update={"authorization_file": str(resolve(r.authorization_file))}
                )
                if r.authorization_file
                else r
                for name, r in m.cap.recipients.items()
            },
        }
    )
    return EncConfig(
        source=source,
        data_dir=data_dir,
        database_url=url,
        http=http,
        servers=servers,
        limits=m.limits,
        dashboard=m.dashboard,
        cap=cap,
        metrics=m.metrics,
        retention=m.retention,
        store_key=m.store_key.model_copy(
            update={
                k: str(resolve_in_data(getattr(m.store_key, k)))
                for k in ("file", "wrapped_file", "pin_file")
            }
        ),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load_server(kid: str, trust: ServerTrust, path: Path, where: str) -> ServerKey:
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where}: {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{where}: {path} is readable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}"
        )
    data = path.read_bytes()
    key = _parse_key(data)
    if key is None:
        raise ConfigError(f"{where}: {path} must hold a 16- or 32-byte key, raw or as hex text")
    return ServerKey(kid=bytes.fromhex(kid), key=key, name=trust.name)


def _parse_key(data: bytes) -> bytes | None:
    text = data.strip()
    if len(text) in (32, 64):
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    return data if len(data) in (16, 32) else None
