"""The provisioning bundle: what ``citywatch server device add`` writes for one device,
and what the device (``citywatch edge provision``, the simulator) reads back.

    {"uid": "pole-0042", "kid_hex": "0123456789abcdef", "alg": "A256GCM", "key_hex": "...",
     "zone": "old-town", "lat": 52.2297, "lon": 21.0122,
     "server": {"host": "broker.example", "port": 8883, "tls": true, "ca_pem": "...",
                "topic_prefix": "citywatch/v1",
                "alternates": [{"host": "broker-2.example", "port": 8883}]}}

It holds the device key in clear: it goes into the device's key store (non-extractable)
and is then destroyed. One type, parsed and written here, so that the server, the pole and
the simulator cannot drift apart. No I/O: reading and writing files is the caller's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._envelope import ALG_NAMES, KID_LENGTH
from ._errors import InvalidBundle

__all__ = ["DEFAULT_TOPIC_PREFIX", "BrokerAddress", "ProvisioningBundle"]

DEFAULT_TOPIC_PREFIX = "citywatch/v1"
_KEY_FIELDS = frozenset({"uid", "kid_hex", "alg", "key_hex"})
_OTHER_FIELDS = frozenset({"server", "zone", "lat", "lon"})
_ALG_BY_NAME = {name: alg for alg, name in ALG_NAMES.items()}
_KEY_LENGTHS = {1: 16, 3: 32}  # A128GCM, A256GCM
_HEX = re.compile(r"[0-9a-fA-F]*")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """The bundle's ``server`` part: how the device reaches the broker."""

    host: str
    """Broker host name as the device sees it."""
    port: int = 1883
    """Broker port."""
    tls: bool = False
    """Connect with TLS."""
    ca_pem: str | None = None
    """The broker's CA certificate (PEM), when TLS uses a private CA."""
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    """Topic prefix, e.g. ``citywatch/v1``."""
    alternates: tuple[tuple[str, int], ...] = ()
    """Other (host, port) endpoints of the same broker cluster (a city on NATS): the
    device tries them in turn when ``host`` cannot be reached. Same TLS and CA."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise InvalidBundle("bundle field 'server.host' must be the broker's host name")
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 < self.port < 65536
        ):
            raise InvalidBundle(f"bundle field 'server.port' is {self.port!r}, not a port")
        if not isinstance(self.tls, bool):
            raise InvalidBundle("bundle field 'server.tls' must be true or false")
        if self.ca_pem is not None and not isinstance(self.ca_pem, str):
            raise InvalidBundle("bundle field 'server.ca_pem' must be a PEM string or null")
        if not isinstance(self.topic_prefix, str) or not self.topic_prefix:
            raise InvalidBundle("bundle field 'server.topic_prefix' must be a non-empty string")
        for k, alt in enumerate(self.alternates):
            if not (
                isinstance(alt, tuple)
                and len(alt) == 2
                and isinstance(alt[0], str)
                and alt[0]
                and isinstance(alt[1], int)
                and not isinstance(alt[1], bool)
                and 0 < alt[1] < 65536
            ):
                raise InvalidBundle(
                    f"bundle field 'server.alternates[{k}]' must be "
                    '{"host": name, "port": 1..65535}'
                )

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of the broker first, then its alternates: the order to try."""
        return ((self.host, self.port), *self.alternates)

    @classmethod
    def parse(cls, data: object) -> BrokerAddress:
        """Validate the ``server`` object of a bundle (unknown keys are refused)."""
        if not isinstance(data, Mapping):
            raise InvalidBundle("bundle field 'server' must be an object with host, port, tls")
        known = {"host", "port", "tls", "ca_pem", "topic_prefix", "alternates"}
        unknown = sorted(map(str, data.keys() - known))
        if unknown:
            raise InvalidBundle(f"bundle field 'server' has unknown keys {unknown}")
        if "host" not in data:
            raise InvalidBundle("bundle field 'server.host' is missing")
        fields = {k: data[k] for k in known - {"alternates"} if k in data}
        alternates = data.get("alternates", [])
        if not isinstance(alternates, list):
            raise InvalidBundle("bundle field 'server.alternates' must be a list")
        alts: list[tuple[str, int]] = []
        for k, alt in enumerate(alternates):
            if not isinstance(alt, Mapping) or set(alt) != {"host", "port"}:
                raise InvalidBundle(
                    f"bundle field 'server.alternates[{k}]' must be "
                    '{"host": name, "port": 1..65535}'
                )
            alts.append((alt["host"], alt["port"]))
        return cls(**fields, alternates=tuple(alts))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "ca_pem": self.ca_pem,
            "topic_prefix": self.topic_prefix,
        }
        if self.alternates:  # absent when there are none: older readers keep working
            out["alternates"] = [{"host": h, "port": port} for h, port in self.alternates]
        return out


@dataclass(frozen=True, slots=True)
class ProvisioningBundle:
    """A validated provisioning bundle."""

    uid: str
    """The device's UID (travels only encrypted)."""
    kid: bytes
    """The 8-byte key identifier, a random pseudonym sent in clear."""
    alg: int
    """COSE alg of the key: 1 (A128GCM) or 3 (A256GCM)."""
    key: bytes = field(repr=False)
    """The AES key: 16 bytes for A128GCM, 32 for A256GCM. Never printed."""
    zone: str | None = None
    """The zone the device is registered in."""
    lat: float | None = None
    """Registered latitude."""
    lon: float | None = None
    """Registered longitude."""
    server: BrokerAddress | None = None
    """How to reach the broker; absent in a bundle that carries only the key."""

    def __post_init__(self) -> None:
        if not isinstance(self.uid, str) or not self.uid.strip():
            raise InvalidBundle("bundle field 'uid' must be a non-empty string")
        if not isinstance(self.kid, bytes) or len(self.kid) != KID_LENGTH:
            raise InvalidBundle(f"bundle kid must be {KID_LENGTH} bytes")
        if self.alg not in ALG_NAMES:
            raise InvalidBundle(f"bundle alg {self.alg!r} is not A128GCM (1) or A256GCM (3)")
        expected = _KEY_LENGTHS[self.alg]
        if not isinstance(self.key, bytes) or len(self.key) != expected:
            length = len(self.key) if isinstance(self.key, bytes) else "?"
            raise InvalidBundle(
                f"bundle for kid {self.kid.hex()}: alg {ALG_NAMES[self.alg]} takes a "
                f"{expected}-byte key, but key_hex holds {length} bytes: the bundle is "
                "inconsistent, ask the server for a new one"
            )
        if self.zone is not None and not isinstance(self.zone, str):
            raise InvalidBundle("bundle field 'zone' must be a string")
        for name in ("lat", "lon"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise InvalidBundle(f"bundle field {name!r} must be a number")

    def __repr__(self) -> str:  # never show the key
        return f"ProvisioningBundle(uid={self.uid!r}, kid={self.kid.hex()})"

    @classmethod
    def parse(cls, bundle: Mapping[str, object]) -> ProvisioningBundle:
        """Validate the JSON object of a bundle; raise ``InvalidBundle`` naming the field."""
        if not isinstance(bundle, Mapping):
            raise InvalidBundle(
                f"a provisioning bundle is a JSON object, not {type(bundle).__name__}"
            )
        missing = _KEY_FIELDS - bundle.keys()
        unknown = bundle.keys() - _KEY_FIELDS - _OTHER_FIELDS
        if missing or unknown:
            raise InvalidBundle(
                f"bundle fields must be {sorted(_KEY_FIELDS)} (and optionally "
                f"{sorted(_OTHER_FIELDS)}): missing {sorted(missing)}, "
                f"unknown {sorted(map(str, unknown))}"
            )
        alg_name = bundle["alg"]
        if not isinstance(alg_name, str) or alg_name not in _ALG_BY_NAME:
            raise InvalidBundle(f"bundle field 'alg' is {alg_name!r}, not 'A128GCM' or 'A256GCM'")
        uid = bundle["uid"]
        if not isinstance(uid, str):
            raise InvalidBundle("bundle field 'uid' must be a non-empty string")
        zone = bundle.get("zone")
        if zone is not None and not isinstance(zone, str):
            raise InvalidBundle("bundle field 'zone' must be a string")
        server = bundle.get("server")
        return cls(
            uid=uid,
            kid=_hex_field(bundle, "kid_hex", lengths=(KID_LENGTH,)),
            alg=_ALG_BY_NAME[alg_name],
            key=_hex_field(bundle, "key_hex", lengths=(16, 32)),
            zone=zone,
            lat=_number(bundle, "lat"),
            lon=_number(bundle, "lon"),
            server=None if server is None else BrokerAddress.parse(server),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``parse`` reads back."""
        out: dict[str, Any] = {
            "uid": self.uid,
            "kid_hex": self.kid.hex(),
            "alg": ALG_NAMES[self.alg],
            "key_hex": self.key.hex(),
        }
        for name in ("zone", "lat", "lon"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.server is not None:
            out["server"] = self.server.to_json()
        return out


def _number(bundle: Mapping[str, object], name: str) -> float | None:
    value = bundle.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidBundle(f"bundle field {name!r} must be a number")
    return float(value)


def _hex_field(bundle: Mapping[str, object], name: str, *, lengths: tuple[int, ...]) -> bytes:
    # The value of key_hex is secret: messages give its length, never its content.
    value = bundle[name]
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) % 2:
        raise InvalidBundle(f"bundle field {name!r} must be a string of hex digit pairs")
    if len(value) // 2 not in lengths:
        expected = " or ".join(str(2 * n) for n in lengths)
        raise InvalidBundle(
            f"bundle field {name!r} must be {expected} hex digits, not {len(value)}"
        )
    return bytes.fromhex(value)
