"""The server's configuration: one TOML file, validated strictly (unknown keys are
errors), every error reported with the file and the key that is wrong.

Relative paths: ``data_dir`` is relative to the folder of the config file; key, token
and CA files are relative to ``data_dir``.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protocol import Limits, RateLimit, Timing

from ._errors import ConfigError

__all__ = [
    "AdminConfig",
    "BrokerConfig",
    "DatabaseConfig",
    "EncConfig",
    "MasterKeyConfig",
    "ScheduleConfig",
    "ServerConfig",
    "TimingConfig",
    "VerificationConfig",
    "example_config",
    "load_config",
]

PathLike = Annotated[Path, Field(strict=False)]
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatabaseConfig(_Section):
    url: str = ""
    """SQLAlchemy URL; empty means the SQLite file ``server.db`` in the data directory.
    PostgreSQL: ``postgresql+psycopg://user:password@host/dbname``."""


class BrokerConfig(_Section):
    transport: Literal["mqtt", "nats"] = "mqtt"
    """``"mqtt"``: one MQTT broker (Mosquitto, the pilot's default; replicas share the
    traffic through ``share_group``). ``"nats"``: a NATS cluster with JetStream, the city
    tier: poles still speak MQTT (to NATS's MQTT gateway, ``host``/``port`` and
    ``device_host``/``device_port`` name one node's MQTT listener), the server consumes a
    replicated stream from ``nats_servers`` (docs/city.md)."""
    host: str = "localhost"
    """MQTT broker the server connects to."""
    port: int = Field(1883, ge=1, le=65535)
    """Its port (8883 is usual with TLS)."""
    device_host: str = ""
    """Broker host written into provisioning bundles; empty means ``host``."""
    device_port: int = Field(0, ge=0, le=65535)
    """Broker port written into provisioning bundles; 0 means ``port``."""
    device_alternates: list[Annotated[str, Field(pattern=r"^[^\s:]+:\d{1,5}$")]] = []
    """Other ``host:port`` MQTT endpoints of the same cluster written into bundles (a
    city on NATS: every node's MQTT listener); a pole tries them in turn."""
    tls: bool = False
    """Connect with TLS."""
    ca_file: PathLike | None = None
    """CA certificate(s) that signed the broker's certificate; none: the system's CAs."""
    cert_file: PathLike | None = None
    """Client certificate, when the broker wants one."""
    key_file: PathLike | None = None
    """Private key of the client certificate."""
    tls_insecure: bool = False
    """Skip the broker host name check. Never in production."""
    username: str = ""
    """MQTT user name; empty for none."""
    password: str = ""
    """MQTT password."""
    share_group: str = Field("citywatch-server", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Shared-subscription group: every server process with the same group shares the
    device traffic."""
    topic_prefix: str = Field("citywatch/v1", pattern=r"^[A-Za-z0-9_/-]{1,64}$")
    """Topic prefix (protocol.md section 5)."""
    keepalive_s: int = Field(30, ge=5, le=3600)
    """MQTT keep-alive."""
    tcp_nodelay: bool = True
    """Set TCP_NODELAY on the broker connection: without it Nagle's algorithm and delayed
    ACKs add tens of ms to every small reply (design.md). Off only to measure that."""

    nats_servers: list[Annotated[str, Field(pattern=r"^(nats|tls)://[^\s/]+:\d{1,5}$")]] = []
    """``transport = "nats"``: the cluster's client URLs (``nats://host:4222``), several
    so that the server fails over when a node dies."""
    nats_stream: str = Field("CITYWATCH_UP", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """``transport = "nats"``: the JetStream stream that keeps uplink and status messages
    until a replica has handled them (created at first start)."""
    nats_replicas: int = Field(3, ge=1, le=5)
    """``transport = "nats"``: copies of the stream in the cluster (at most its size)."""

    @model_validator(mode="after")
    def _tls_files(self) -> BrokerConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.transport == "nats" and not self.nats_servers:
            raise ValueError('transport = "nats" needs nats_servers = ["nats://host:4222", ...]')
        return self


class MasterKeyConfig(_Section):
    source: Literal["file", "pkcs11"] = "file"
    """Where the master key is kept. ``"pkcs11"``: on disk only wrapped (AES-GCM) under a
    non-extractable key in a PKCS#11 token (SoftHSM2, an HSM), unwrapped into memory at
    start-up. ``"file"``: in clear in ``file`` (mode 0600), for a test bench or an
    operator who accepts that; configs written before ``source`` existed mean this."""
    file: PathLike = Path("master.key")
    """``source = "file"``: the master key (64 hex digits), mode 0600; device keys, photos
    and coordinates are sealed under keys derived from it and the ticket key is derived
    from it. Created at first start if absent. Every server replica needs the same file."""
    wrapped_file: PathLike = Path("master.key.wrapped")
    """``source = "pkcs11"``: the master key wrapped under the token key (JSON, mode 0600),
    created at first start if absent. Every replica needs this file and the token key."""
    module: str = ""
    """``source = "pkcs11"``: the token's PKCS#11 module; empty: SoftHSM2's."""
    token_label: str = Field("citywatch-server", min_length=1, max_length=32)
    """``source = "pkcs11"``: label of the token."""
    pin_file: PathLike = Path("token.pin")
    """``source = "pkcs11"``: file holding the token's user PIN (first line), mode 0600."""
    key_label: str = Field("citywatch-server-kek", min_length=1, max_length=64)
    """``source = "pkcs11"``: label of the token key a new wrapped file is made under (an
    existing file names its own, so rotation needs no config change)."""


class RetentionConfig(_Section):
    """How long the server keeps what it no longer needs; 0 keeps it for ever. A purge
    runs every ``purge_every_minutes`` (and by ``citywatch server purge``). Never purged:
    incidents not verified yet and alerts the ENC has not acknowledged."""

    dismissed_photo_hours: float = Field(24.0, ge=0)
    """Photos of incidents the verification dismissed, this long after the decision."""
    alerted_photo_days: float = Field(7.0, ge=0)
    """Photos of alerted incidents, this long after the ENC's receipt (the ENC has its
    own copy; fused incidents count from their decision)."""
    incident_days: float = Field(90.0, ge=0)
    """Decided incidents, deleted with their outbox rows this long after the decision
    (the audit log keeps the purge)."""
    purge_every_minutes: float = Field(15.0, gt=0)
    """How often the running server purges."""

    def periods_ms(self) -> tuple[int | None, int | None, int | None]:
        """(dismissed photos, alerted photos, incidents) in ms; None: kept for ever."""

        def ms(value: float, unit_s: int) -> int | None:
            return int(value * unit_s * 1000) if value > 0 else None

        return (
            ms(self.dismissed_photo_hours, 3600),
            ms(self.alerted_photo_days, 86400),
            ms(self.incident_days, 86400),
        )


class EncConfig(_Section):
    base_url: str = Field("http://127.0.0.1:8700", pattern=r"^https?://")
    """The ENC's alert endpoint is ``<base_url>/v1/alerts``."""
    server_kid: str = Field("5e5e5e5e00000001", pattern=r"^[0-9a-fA-F]{16}$")
    """This server's key id as the ENC knows it (8 bytes, hex)."""
    key_file: PathLike = Path("enc.key")
    """K_SENC (64 or 32 hex digits), shared with the ENC. Created at first start if absent."""
    ca_file: PathLike | None = None
    """CA certificate(s) for the ENC's HTTPS certificate; none: the system's CAs."""
    connect_timeout_s: float = Field(5.0, gt=0, le=300)
    """TCP/TLS connect timeout."""
    request_timeout_s: float = Field(30.0, gt=0, le=600)
    """How long to wait for the N2 after sending N1."""
    concurrency: int = Field(16, ge=1, le=256)
    """Alerts in flight at once (each on a connection kept open to the ENC)."""


class VerificationConfig(_Section):
    threshold: float = Field(0.6, ge=0.0, le=1.0)
    """Incidents whose server score is at or above this go to the ENC (docs/detection.md
    shows recall and false alarms at other thresholds)."""
    uncertainty_band: float = Field(0.1, ge=0.0, le=0.5)
    """Scores within this of the threshold are flagged as uncertain (they still follow
    the threshold; the ENC operator sees the flag)."""
    min_width: int = Field(64, ge=1)
    """Photos narrower than this are rejected as unusable."""
    min_height: int = Field(48, ge=1)
    """Photos lower than this are rejected as unusable."""
    block_after_dismissed: int = Field(5, ge=0)
    """Block a device after this many dismissed reports within ``dismissed_period_s``
    (0: never block)."""
    dismissed_period_s: int = Field(3600, ge=1)
    """Look-back period for ``block_after_dismissed``."""
    fuse_within_m: float = Field(50.0, ge=0.0, le=5000.0)
    """A dangerous incident reported within this distance of one already sent to the
    ENC, and within ``fuse_within_s`` of it, is fused into it: stored and linked, but
    no second alert (0: never fuse)."""
    fuse_within_s: int = Field(120, ge=1, le=3600)
    """Time window of the fusion, between the two reports' arrival at the server."""
    models_dir: PathLike | None = None
    """Folder of the photo check's model files (``citywatch server models install``);
    relative to ``data_dir``. Unset or "": ``$CITYWATCH_MODELS_DIR``, else ``var/models``
    in a source checkout, else ``/var/lib/citywatch/models``."""

    @field_validator("models_dir", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return None if value == "" else value

    workers: int = Field(1, ge=0, le=64)
    """Worker processes that check photos, each with its own copy of the models (about
    100 ms of one core per photo); 0 checks them in one thread of the server's process."""
    worker_nice: int = Field(10, ge=0, le=19)
    """How much nicer than the server the photo-check workers run: when the cores are
    short, C2 and C4 (the devices wait for them) go first and the checks queue behind
    (0: the same priority; on a host shared with other busy work, the checks then wait
    for that work too)."""
    max_pixels: int = Field(24_000_000, ge=10_000, le=400_000_000)
    """Photos with more pixels are refused before they are decoded (decompression bombs)."""
    analysis_long_side: int = Field(960, ge=224, le=4096)
    """Photos are analysed with their long side scaled down to at most this."""
    device_weight: float = Field(0.3, ge=0.0, le=0.5)
    """How far the device's own score moves the server's (by up to half this either
    way), when the photo shows a person; a photo of nobody scores 0 whatever the device
    says."""


class TimingConfig(_Section):
    window_s: float = Field(30.0, gt=0)
    """Timestamps are accepted within +/- this of the server's clock."""
    ticket_lifetime_s: float = Field(60.0, gt=0)
    """How long a C2 ticket is valid."""
    backoff_base_s: float = Field(1.0, gt=0)
    """First ENC retry delay."""
    backoff_max_s: float = Field(300.0, gt=0)
    """Longest delay between two ENC attempts."""
    max_photo_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    """Largest photo accepted in C3."""
    rate_limit_burst: int = Field(10, ge=1)
    """C1s a device may send back to back."""
    rate_limit_per_minute: float = Field(30.0, gt=0)
    """Sustained C1s per minute per device."""
    replay_capacity: int = Field(100_000, ge=100)
    """C1/C3 timestamps the replay cache holds (all devices together); when it is full of
    live entries new contacts get error 9. Refused C1s never take an entry."""
    poll_s: float = Field(2.0, gt=0, le=60)
    """How often the server re-reads the registry and the windows table (changes made
    by the CLI without the admin API, or by another replica)."""

    def protocol_timing(self) -> Timing:
        return Timing(
            window_ms=int(self.window_s * 1000),
            ticket_lifetime_ms=int(self.ticket_lifetime_s * 1000),
            backoff_base_ms=int(self.backoff_base_s * 1000),
            backoff_max_ms=int(self.backoff_max_s * 1000),
        )

    def limits(self) -> Limits:
        return Limits(max_photo=self.max_photo_bytes)

    def rate_limit(self) -> RateLimit:
        return RateLimit(burst=self.rate_limit_burst, per_minute=self.rate_limit_per_minute)


class ScheduleConfig(_Section):
    zone: str = Field(min_length=1, max_length=64)
    """The zone whose devices monitor during this schedule."""
    kind: Literal["daily", "always", "once"]
    """``daily``: from ``start`` to ``end`` every day of ``days`` (an end at or before the
    start runs past midnight); ``always``: all day every day; ``once``: from ``from`` to
    ``until``."""
    start: str = "00:00"
    """``daily``: local start time, HH:MM."""
    end: str = "00:00"
    """``daily``: local end time, HH:MM."""
    days: list[str] = Field(default_factory=lambda: list(_DAYS))
    """``daily``: days on which a window starts (mon..sun)."""
    timezone: str = "UTC"
    """IANA time zone of ``start``/``end`` (e.g. Europe/Warsaw)."""
    from_: dt.datetime | None = Field(None, alias="from")
    """``once``: start (TOML date-time with an offset)."""
    until: dt.datetime | None = None
    """``once``: end (TOML date-time with an offset)."""

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError("must be HH:MM (00:00 to 23:59)")
        return v

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in _DAYS]
        if bad or not v:
            raise ValueError(f"must be a non-empty list of {', '.join(_DAYS)}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _once(self) -> ScheduleConfig:
        if self.kind == "once":
            if self.from_ is None or self.until is None:
                raise ValueError("a 'once' schedule needs 'from' and 'until'")
            if self.from_.tzinfo is None or self.until.tzinfo is None:
                raise ValueError("'from' and 'until' need a UTC offset (e.g. +02:00 or Z)")
            if self.until <= self.from_:
                raise ValueError("'until' must be after 'from'")
        if self.kind == "daily" and self.start == self.end == "00:00":
            pass  # a full day, midnight to midnight
        return self


class AdminConfig(_Section):
    enabled: bool = True
    """Serve the admin HTTP API (and /metrics) from the server process."""
    host: str = "127.0.0.1"
    """Listen address. Keep it on loopback or a management network."""
    port: int = Field(8600, ge=1, le=65535)
    """Listen port."""
    token_file: PathLike = Path("admin.token")
    """Bearer token for the API (mode 0600); created at first start if absent."""


class ServerConfig(_Section):
    data_dir: PathLike = Path("var/server")
    """Folder for the SQLite database and the key files."""
    database: DatabaseConfig = DatabaseConfig()
    broker: BrokerConfig = BrokerConfig()
    master_key: MasterKeyConfig = MasterKeyConfig()
    retention: RetentionConfig = RetentionConfig()
    enc: EncConfig = EncConfig()
    verification: VerificationConfig = VerificationConfig()
    timing: TimingConfig = TimingConfig()
    admin: AdminConfig = AdminConfig()
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    """Monitoring windows that open by themselves, per zone."""

    source: PathLike | None = Field(None, exclude=True)
    """The file this was read from (set by ``load_config``)."""

    # -- resolved paths and values ------------------------------------------------------

    def path(self, p: Path) -> Path:
        """A file setting resolved against the data directory."""
        return p if p.is_absolute() else self.data_dir / p

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.data_dir / 'server.db').resolve()}"

    @property
    def server_kid(self) -> bytes:
        return bytes.fromhex(self.enc.server_kid)

    @property
    def name(self) -> str:
        return self.source.name if self.source else "config"


def _format_errors(name: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in err["loc"])
        loc = loc.replace(".[", "[").replace("from_", "from")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {loc}: {msg}" if loc else f"{name}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: dict[str, Any], *, name: str = "config", base: Path | None = None
) -> ServerConfig:
    """Validate an already-parsed TOML document; relative ``data_dir`` is taken from
    ``base`` (the config file's folder)."""
    try:
        cfg = ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(name, exc)) from None
    if base is not None and not cfg.data_dir.is_absolute():
        cfg = cfg.model_copy(update={"data_dir": base / cfg.data_dir})
    return cfg


def load_config(path: Path | str) -> ServerConfig:
    """Read and validate a server config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config file {path}: {exc.strerror}. "
            "`citywatch server config example` prints one to start from"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    cfg = parse_config(data, name=path.name, base=path.resolve().parent)
    return cfg.model_copy(update={"source": path})


def example_config(*, data_dir: str = "./var/server") -> str:
    """A complete, commented config that works as it is on one machine."""
    kid = secrets.token_hex(8)
    return _EXAMPLE.replace("@DATA_DIR@", data_dir).replace("@KID@", kid)


_EXAMPLE = """\
# CityWatch trusted server. Every key is shown with its default; unknown keys are errors.
# Relative paths: data_dir is relative to this file's folder; key, token and CA files are
# relative to data_dir.

# Folder for the SQLite database, the master key, the ENC key and the admin token.
data_dir = "@DATA_DIR@"

[database]
# SQLAlchemy URL. Empty: the SQLite file server.db in data_dir (one server process).
# Several server processes sharing the load need PostgreSQL, e.g.
# url = "postgresql+psycopg://citywatch:secret@db.example/citywatch"
url = ""

[broker]
# "mqtt": one broker (Mosquitto, a pilot). "nats": a NATS cluster with JetStream, the
# city tier (docs/city.md): poles still speak MQTT to its gateway, the server reads a
# replicated stream from nats_servers.
transport = "mqtt"
host = "localhost"
port = 1883
# What provisioning bundles tell devices (empty / 0: the same as host / port), and the
# cluster's other MQTT endpoints ("host:port") a pole tries in turn.
device_host = ""
device_port = 0
device_alternates = []
# transport = "nats": the cluster's client URLs, the stream and its copies.
nats_servers = []
nats_stream = "CITYWATCH_UP"
nats_replicas = 3
# TLS to the broker (port 8883 usually). ca_file: the CA that signed the broker's
# certificate (empty: the system's CAs); cert_file/key_file: a client certificate.
tls = false
# ca_file = "broker-ca.pem"
# cert_file = "server-client.pem"
# key_file = "server-client.key"
tls_insecure = false          # skip the host name check: never in production
username = ""
password = ""
# Server processes with the same group share device traffic ($share/<group>/...).
share_group = "citywatch-server"
topic_prefix = "citywatch/v1"
keepalive_s = 30
tcp_nodelay = true            # leave on: Nagle + delayed ACKs add ~40 ms per reply

[master_key]
# Device keys, photos and coordinates are sealed (AES-256-GCM) under keys derived from
# the master key. source = "pkcs11": the master key is on disk only wrapped under a
# non-extractable key in a PKCS#11 token (created at first start: a token key labelled
# key_label and the wrapped file); nothing on disk opens it without the token and its
# PIN. Every replica needs the wrapped file and a token with the same key.
# source = "file": the master key sits in clear in `file` (64 hex digits, mode 0600):
# only where you accept that (a test bench). Key rotation: docs/operations.md.
source = "file"
file = "master.key"
wrapped_file = "master.key.wrapped"
module = ""                   # empty: SoftHSM2's module
token_label = "citywatch-server"
pin_file = "token.pin"        # the token's user PIN, mode 0600
key_label = "citywatch-server-kek"

[retention]
# How long what is no longer needed is kept (0: for ever). Never purged: incidents not
# verified yet, and alerts the ENC has not acknowledged. Each purge is one audit entry
# (retention.purge); `citywatch server purge --dry-run` shows what the next one removes.
dismissed_photo_hours = 24.0  # photos of incidents the verification dismissed
alerted_photo_days = 7.0      # photos of alerted incidents, after the ENC's receipt
incident_days = 90.0          # decided incidents themselves
purge_every_minutes = 15.0

[enc]
# The Emergency Notification Center: N1 is POSTed to <base_url>/v1/alerts.
base_url = "http://127.0.0.1:8700"
# This server's key id as the ENC knows it (8 bytes as hex), and K_SENC (created at
# first start if absent: give the ENC the same key and kid).
server_kid = "@KID@"
key_file = "enc.key"
# ca_file = "enc-ca.pem"       # CA of the ENC's HTTPS certificate (empty: system CAs)
connect_timeout_s = 5.0
request_timeout_s = 30.0
concurrency = 16

[verification]
# Incidents whose server score is >= threshold go to the ENC; the others are dismissed
# (docs/detection.md: recall and false alarms at other thresholds).
threshold = 0.6
# Scores within this of the threshold are flagged uncertain for the ENC operator.
uncertainty_band = 0.1
# Photos smaller than this are unusable (score 0).
min_width = 64
min_height = 48
# The photo check's model files (`citywatch server models install`); "": the default
# ($CITYWATCH_MODELS_DIR, var/models in a checkout, /var/lib/citywatch/models).
models_dir = ""
workers = 1                   # processes checking photos (~100 ms of one core each); 0: in-process
worker_nice = 10              # their niceness above the server's: C2/C4 first when cores are short
max_pixels = 24000000         # larger photos are refused before decoding
analysis_long_side = 960      # photos are analysed at most this large
device_weight = 0.3           # how far the device's own score moves the server's
# Block a device after this many dismissed reports within dismissed_period_s (0: never).
block_after_dismissed = 5
dismissed_period_s = 3600
# Poles that see the same scene: a dangerous report within fuse_within_m metres and
# fuse_within_s seconds of one already alerted is linked to it, with no second alert
# (0 m: every report alerts on its own).
fuse_within_m = 50.0
fuse_within_s = 120

[timing]
window_s = 30.0               # timestamps accepted within +/- this
ticket_lifetime_s = 60.0      # C2 ticket lifetime
backoff_base_s = 1.0          # ENC retry: first delay ...
backoff_max_s = 300.0         # ... doubling up to this
max_photo_bytes = 2097152
rate_limit_burst = 10         # C1s per device back to back ...
rate_limit_per_minute = 30.0  # ... and sustained
replay_capacity = 100000      # replay cache entries, all devices together
poll_s = 2.0                  # re-read registry and windows (CLI changes, other replicas)

[admin]
# HTTP admin API (OpenAPI at /docs) and Prometheus metrics at /metrics.
enabled = true
host = "127.0.0.1"
port = 8600
token_file = "admin.token"    # bearer token, mode 0600, created at first start if absent

# Monitoring windows that open by themselves. Operators open others with
# `citywatch server window open --zone ZONE --until ISO8601`.
# Nights only in one zone:
# [[schedules]]
# zone = "old-town"
# kind = "daily"
# start = "22:00"
# end = "06:00"
# timezone = "Europe/Warsaw"
# days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
#
# All day, every day:
# [[schedules]]
# zone = "station"
# kind = "always"
#
# Once, for an event:
# [[schedules]]
# zone = "stadium"
# kind = "once"
# from = 2026-06-01T18:00:00+02:00
# until = 2026-06-02T01:00:00+02:00
"""
