"""SoftHSM2 helpers for tests, benchmarks and development machines.

SoftHSM2 reads its configuration (``SOFTHSM2_CONF``) and scans its token directory only
in ``C_Initialize``, which python-pkcs11 runs once per process and module: create every
token a process needs *before* its first ``Pkcs11KeyStore`` on SoftHSM2, and set
``SOFTHSM2_CONF`` to the configuration written here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ._errors import KeyStoreModuleMissing, TokenOperationFailed

__all__ = ["SOFTHSM_MODULE_PATHS", "SoftHsmToken", "create_softhsm_tokens", "find_softhsm_module"]

SOFTHSM_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",  # Debian
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",  # Ubuntu (multiarch)
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",  # Raspberry Pi OS 64-bit
    "/usr/lib64/pkcs11/libsofthsm2.so",  # Fedora
    "/usr/local/lib/softhsm/libsofthsm2.so",  # built from source
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",  # macOS
)


class SoftHsmToken(NamedTuple):
    """A SoftHSM2 token, as ``Pkcs11KeyStore(*token)`` takes it."""

    module: str
    """Path of libsofthsm2.so."""
    label: str
    """The token's label."""
    pin: str
    """The token's user PIN."""


def find_softhsm_module() -> str | None:
    """Path of libsofthsm2.so: ``$SOFTHSM2_MODULE``, else the usual places; None if absent."""
    configured = os.environ.get("SOFTHSM2_MODULE")
    candidates = (configured,) if configured else SOFTHSM_MODULE_PATHS
    return next((path for path in candidates if os.path.isfile(path)), None)


def create_softhsm_tokens(
    directory: str | os.PathLike[str],
    labels: Iterable[str],
    *,
    module: str | None = None,
) -> tuple[Path, list[SoftHsmToken]]:
    """Write ``directory``/softhsm2.conf and initialise one token per label in it.

    Each token gets a random user PIN. Returns the configuration's path, for
    ``SOFTHSM2_CONF``, and the tokens. The process environment is not changed.
    """
    module = module or find_softhsm_module()
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        raise KeyStoreModuleMissing(
            "SoftHSM2 is not installed (libsofthsm2.so or softhsm2-util missing): install "
            "softhsm2 (Debian: apt install softhsm2) or set SOFTHSM2_MODULE"
        )
    root = Path(directory)
    tokendir = root / "tokens"
    tokendir.mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    tokens = []
    for label in labels:
        pin = secrets.token_hex(8)
        command = [util, "--module", module, "--init-token", "--free", "--label", label,
                   "--pin", pin, "--so-pin", secrets.token_hex(8)]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise TokenOperationFailed(
                f"softhsm2-util could not initialise token {label!r} in {tokendir}: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        tokens.append(SoftHsmToken(module, label, pin))
    return conf, tokens
