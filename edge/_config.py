"""The device configuration, ``/etc/citywatch/edge.toml``: one TOML file, validated
strictly (unknown keys are errors), every error reported with the file and the key.

``citywatch edge provision`` writes the identity, key-store and broker parts from a
provisioning bundle; the pilot engineer adds the camera, GNSS and pre-screen parts.
Relative paths (PIN file, TLS files, state directory) are relative to the folder of the
config file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol import ALG_A128GCM, ALG_A256GCM, Limits, Timing

from ._errors import EdgeError

if TYPE_CHECKING:
    from ._prescreen import PreScreenConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "BrokerConfig",
    "EdgeConfig",
    "EdgeConfigError",
    "KeyStoreConfig",
    "OutboxConfig",
    "PositionConfig",
    "ProtocolTimingConfig",
    "StatusConfig",
    "TlsConfig",
    "config_errors",
    "load_config",
    "parse_config",
    "prescreen_config_from_file",
]

DEFAULT_CONFIG_PATH = Path("/etc/citywatch/edge.toml")
DEFAULT_STATE_DIR = Path("/var/lib/citywatch")

# Paths come from TOML as strings; strict mode would refuse them.
PathLike = Annotated[Path, Field(strict=False)]

# The sections of the drivers and the pre-screen, kept as free-form tables until their
# models exist: replace each alias by the driver's pydantic model (and its default).
CameraSection = dict[str, Any]
GnssSection = dict[str, Any]
PreScreenSection = dict[str, Any]
PrivacySection = dict[str, Any]

_ALGS = {"A128GCM": ALG_A128GCM, "A256GCM": ALG_A256GCM}
_TOPIC_PREFIX = r"^[A-Za-z0-9_/-]{1,64}$"


class EdgeConfigError(EdgeError):
    """The device config is unreadable or invalid; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PositionConfig(_Section):
    """The pole's registered position: sent (``src: "fixed"``) when GNSS has no fix."""

    lat: float = Field(ge=-90.0, le=90.0)
    """Latitude, degrees."""
    lon: float = Field(ge=-180.0, le=180.0)
    """Longitude, degrees."""
    alt: float | None = None
    """Altitude, metres; omit if unknown."""


class KeyStoreConfig(_Section):
    """The PKCS#11 token that holds the device key (SoftHSM2, or a secure element)."""

    module: PathLike
    """Path of the token's PKCS#11 module (libsofthsm2.so, the cryptoauthlib module ...)."""
    token_label: str = Field(default="citywatch", min_length=1, max_length=32)
    """Label of the token."""
    pin: str | None = Field(default=None, min_length=1, repr=False)
    """User PIN. Prefer ``pin_file``: this file is readable by the service's group."""
    pin_file: PathLike | None = None
    """File holding the user PIN (first line), mode 0600 or 0640."""
    key_label: str = ""
    """Label of the device key in the token; empty: ``citywatch-<kid_hex>``."""
    max_key_bits: Literal[128, 256] | None = None
    """128 for a token that holds AES-128 only (ATECC608); empty: as the module reports."""

    @model_validator(mode="after")
    def _one_pin(self) -> KeyStoreConfig:
        if (self.pin is None) == (self.pin_file is None):
            raise ValueError("set exactly one of 'pin' and 'pin_file'")
        return self


class TlsConfig(_Section):
    """TLS to the broker; the presence of ``[broker.tls]`` turns it on."""

    ca_file: PathLike | None = None
    """CA certificate(s) that signed the broker's certificate; none: the system's CAs."""
    cert_file: PathLike | None = None
    """Client certificate, when the broker asks for one."""
    key_file: PathLike | None = None
    """Private key of the client certificate."""
    insecure: bool = False
    """Skip the broker host-name check. Never in production."""

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("'cert_file' and 'key_file' go together")
        return self


class BrokerConfig(_Section):
    """The MQTT broker between the device and the trusted server."""

    host: str = Field(min_length=1)
    """Broker host name or address."""
    port: int = Field(default=1883, ge=1, le=65535)
    """Broker port (8883 is usual with TLS)."""
    alternates: list[Annotated[str, Field(pattern=r"^[^\s:]+:\d{1,5}$")]] = []
    """Other ``host:port`` endpoints of the same broker cluster (a city on NATS, from the
    bundle's ``server.alternates``): when the broker cannot be reached or the connection
    is lost, the pole tries the next one, in turn. Same TLS and credentials."""
    tls: TlsConfig | None = None
    """TLS settings; absent: plain TCP (only on a closed network)."""
    username: str = ""
    """MQTT user name; empty for none."""
    password: str = Field(default="", repr=False)
    """MQTT password."""
    topic_prefix: str = Field(default="citywatch/v1", pattern=_TOPIC_PREFIX)
    """Topics are ``<prefix>/<kid_hex>/up``, ``/down`` and ``/status`` (protocol.md 5)."""
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    """MQTT keep-alive; the broker publishes the "offline" will after 1.5 times this."""
    tcp_nodelay: bool = True
    """Disable Nagle's algorithm: each small protocol reply then leaves at once."""
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    """First delay before reconnecting to a broker that is down."""
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600)
    """Longest delay between reconnection attempts."""

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) of the broker, then of its alternates: the order tried."""
        alts = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in self.alternates)]
        return [(self.host, self.port), *alts]


class OutboxConfig(_Section):
    """The durable outbox of captured incidents. When full, new captures are refused
    (and reported); stored incidents are never dropped to make room."""

    max_incidents: int = Field(default=1000, ge=1)
    """Most incidents kept waiting for delivery."""
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    """Most bytes of sealed photos kept waiting for delivery."""
    max_age_hours: float = Field(default=72.0, ge=0)
    """Retention: an incident not delivered within this long is deleted (its alert is
    moot by then, and its photo shows a person); 0 keeps it until delivered."""


class ProtocolTimingConfig(_Section):
    """Overrides of protocol.md section 6; the defaults are the protocol's."""

    window_s: float = Field(default=30.0, gt=0)
    """Timestamps are accepted within +/- this of the device's clock."""
    c2_timeout_s: float = Field(default=10.0, gt=0)
    """How long to wait for C2 after C1."""
    c4_timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for C4 after C3."""
    backoff_base_s: float = Field(default=1.0, gt=0)
    """First retry delay after a timeout or refusal."""
    backoff_max_s: float = Field(default=300.0, gt=0)
    """Longest delay between two attempts; also how often a device told to stop sending
    (errors 2, 3, 4) tries again by itself."""
    max_photo_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """Largest photo the server accepts; a bigger capture is refused when stored."""

    def timing(self) -> Timing:
        return Timing(
            window_ms=round(self.window_s * 1000),
            c2_timeout_ms=round(self.c2_timeout_s * 1000),
            c4_timeout_ms=round(self.c4_timeout_s * 1000),
            backoff_base_ms=round(self.backoff_base_s * 1000),
            backoff_max_ms=round(self.backoff_max_s * 1000),
        )

    def limits(self) -> Limits:
        return Limits(max_photo=self.max_photo_bytes)


class StatusConfig(_Section):
    """The status file ``<state_dir>/status.json`` read by ``citywatch edge status``."""

    interval_s: float = Field(default=5.0, gt=0, le=300)
    """How often the daemon rewrites it even when nothing changed (its heartbeat)."""


class EdgeConfig(_Section):
    """Everything one street-pole daemon needs."""

    uid: str = Field(min_length=1, max_length=64)
    """The device's UID (travels only encrypted)."""
    kid_hex: str = Field(pattern=r"^[0-9a-fA-F]{16}$")
    """The 8-byte key identifier in hex, a random pseudonym sent in clear."""
    alg: Literal["A128GCM", "A256GCM"] = "A256GCM"
    """Algorithm of the device key."""
    zone: str = Field(min_length=1, max_length=64)
    """The zone the pole belongs to (monitoring windows are per zone)."""
    position: PositionConfig
    """The registered fixed position."""
    key_store: KeyStoreConfig
    broker: BrokerConfig
    state_dir: PathLike = DEFAULT_STATE_DIR
    """Outbox, protocol state (epoch, clock offset) and status file."""
    outbox: OutboxConfig = OutboxConfig()
    protocol: ProtocolTimingConfig = ProtocolTimingConfig()
    status: StatusConfig = StatusConfig()
    camera: CameraSection = Field(default_factory=dict)
    """Camera driver settings."""
    gnss: GnssSection = Field(default_factory=dict)
    """GNSS driver settings."""
    prescreen: PreScreenSection = Field(default_factory=dict)
    """Pre-screen (pose model and decision) settings."""
    privacy: PrivacySection = Field(default_factory=dict)
    """Privacy masks (``[[privacy.masks]]``, checked by ``edge._privacy.PrivacyConfig``):
    regions blacked out in every frame and snapshot."""

    source: PathLike | None = Field(default=None, exclude=True)
    """The file this was read from (set by ``load_config``)."""

    @property
    def kid(self) -> bytes:
        return bytes.fromhex(self.kid_hex)

    @property
    def alg_id(self) -> int:
        """COSE alg of the device key: 1 (A128GCM) or 3 (A256GCM)."""
        return _ALGS[self.alg]

    @property
    def key_label(self) -> str:
        return self.key_store.key_label or f"citywatch-{self.kid_hex.lower()}"

    @property
    def name(self) -> str:
        return str(self.source) if self.source else "edge config"

    def topic(self, kind: Literal["up", "down", "status"]) -> str:
        return f"{self.broker.topic_prefix}/{self.kid_hex.lower()}/{kind}"

    def read_pin(self) -> str:
        """The token's user PIN, from ``pin`` or the first line of ``pin_file``."""
        ks = self.key_store
        if ks.pin is not None:
            return ks.pin
        assert ks.pin_file is not None
        try:
            pin = ks.pin_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is empty"
            raise EdgeConfigError(
                f"{self.name}: key_store.pin_file: cannot read the PIN from {ks.pin_file}: "
                f"{why}. Write the token's user PIN in it (mode 0600)"
            ) from None
        if not pin:
            raise EdgeConfigError(f"{self.name}: key_store.pin_file: {ks.pin_file} is empty")
        return pin


def config_errors(name: str, exc: ValidationError) -> str:
    """One line per problem: ``<file>: <key>: <what is wrong>``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in err["loc"])
        loc = loc.replace(".[", "[")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; docs/edge.md lists every key)"
        lines.append(f"{name}: {loc}: {msg}" if loc else f"{name}: {msg}")
    return "\n".join(lines)


def _resolve(cfg: EdgeConfig, base: Path) -> EdgeConfig:
    """Make the relative paths of the file relative to its folder."""

    def absolute(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    ks = cfg.key_store.model_copy(update={"pin_file": absolute(cfg.key_store.pin_file)})
    broker = cfg.broker
    if broker.tls is not None:
        tls = broker.tls.model_copy(
            update={
                f: absolute(getattr(broker.tls, f)) for f in ("ca_file", "cert_file", "key_file")
            }
        )
        broker = broker.model_copy(update={"tls": tls})
    return cfg.model_copy(
        update={"key_store": ks, "broker": broker, "state_dir": absolute(cfg.state_dir)}
    )


def parse_config(
    data: dict[str, Any], *, name: str = "edge config", base: Path | None = None
) -> EdgeConfig:
    """Validate an already-parsed TOML document; relative paths are taken from ``base``."""
    try:
        cfg = EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise EdgeConfigError(config_errors(name, exc)) from None
    return _resolve(cfg, base) if base is not None else cfg


def load_config(path: str | os.PathLike[str]) -> EdgeConfig:
    """Read and validate the device config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeConfigError(
            f"cannot read the device config {path}: {exc.strerror}. "
            "`citywatch edge provision --bundle FILE` writes one"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgeConfigError(f"{path}: not valid TOML: {exc}") from None
    cfg = parse_config(data, name=str(path), base=path.resolve().parent)
    return cfg.model_copy(update={"source": path})


def prescreen_config_from_file(path: Path | None) -> PreScreenConfig:
    """The pre-screen settings of a TOML file: its ``[prescreen]`` table when it has one
    (a device config), else the whole file (a pre-screen config of its own); the
    defaults when ``path`` is None. Errors (``PreScreenConfigError``) name file and key."""
    from ._prescreen import PreScreenConfig, load_prescreen_config

    if path is None:
        return PreScreenConfig()
    try:
        has_table = "prescreen" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        has_table = False  # load_prescreen_config says what is wrong
    return load_prescreen_config(path, "prescreen" if has_table else None)
