"""Provisioning bundles: what a device needs to talk to this server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from protocol import BrokerAddress, ProvisioningBundle

from ._config import ServerConfig
from ._errors import RegistryError
from ._store import DeviceInfo

__all__ = ["provisioning_bundle", "write_bundle"]


def provisioning_bundle(config: ServerConfig, device: DeviceInfo, key: bytes) -> ProvisioningBundle:
    """The device's bundle with the broker as devices reach it. It holds the device key in
    clear: it goes to the device's token (which imports it as non-extractable) and is then
    destroyed."""
    b = config.broker
    ca_pem = None
    if b.tls and b.ca_file is not None:
        try:
            ca_pem = config.path(b.ca_file).read_text()
        except OSError as exc:
            raise RegistryError(f"cannot read broker.ca_file for the bundle: {exc}") from None
    return ProvisioningBundle(
        uid=device.uid,
        kid=device.kid,
        alg=device.alg,
        key=key,
        zone=device.zone,
        lat=device.lat,
        lon=device.lon,
        server=BrokerAddress(
            host=b.device_host or b.host,
            port=b.device_port or b.port,
            tls=b.tls,
            ca_pem=ca_pem,
            topic_prefix=b.topic_prefix,
            alternates=tuple(_endpoint(e) for e in b.device_alternates),
        ),
    )


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not 0 < int(port) < 65536:
        raise RegistryError(f"broker.device_alternates: {text!r} has no port 1..65535")
    return host, int(port)


def write_bundle(path: Path, bundle: ProvisioningBundle, *, overwrite: bool = False) -> None:
    """Write the bundle with mode 0600 (it holds a key); never replace a file unless
    asked, so one device's key cannot be overwritten by another's by mistake."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise RegistryError(f"{path} exists; choose another --bundle-out (or --force)") from None
    except OSError as exc:
        raise RegistryError(f"cannot write the bundle {path}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(bundle.to_json(), f, indent=2)
        f.write("\n")
