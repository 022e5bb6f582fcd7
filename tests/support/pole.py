"""A pole provisioned as an installer does it: a bundle (what ``server device add``
writes), ``edge provision`` into a SoftHSM2 token, and ``edge run`` as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hardware import SoftHsmToken
from tests.unit.test_edge_config_cli import cli

REPO = Path(__file__).resolve().parents[2]
DAEMON = (
    "import sys, argparse; from edge._cli_daemon import register_daemon_commands; "
    "p = argparse.ArgumentParser(); register_daemon_commands(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)
"""``python -c DAEMON run --config F``: the edge daemon's commands without the whole CLI."""


def write_bundle(
    path: Path, *, uid: str, kid: bytes, key: bytes, host: str, port: int, prefix: str | None
) -> Path:
    """A provisioning bundle for one pole at a fixed position in zone ``z``."""
    server: dict[str, object] = {"host": host, "port": port}
    if prefix is not None:
        server["topic_prefix"] = prefix
    bundle = {
        "uid": uid,
        "kid_hex": kid.hex(),
        "alg": "A256GCM",
        "key_hex": key.hex(),
        "zone": "z",
        "lat": 50.0,
        "lon": 19.9,
        "server": server,
    }
    path.write_text(json.dumps(bundle))
    return path


def provision(
    tmp_path: Path, token: SoftHsmToken, bundle: Path, *, delete_bundle: bool = True
) -> Path:
    """``edge provision`` of ``bundle`` into ``token``; the config it wrote."""
    pin, config = tmp_path / "pin", tmp_path / "edge.toml"
    pin.write_text(token.pin)
    argv = ["provision", "--bundle", str(bundle), "--config-out", str(config)]
    argv += ["--module", token.module, "--token-label", token.label, "--pin-file", str(pin)]
    argv += ["--state-dir", str(tmp_path / "state")]
    assert cli(*argv, *(["--delete-bundle"] if delete_bundle else [])) == 0
    return config


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``edge run --config config`` as its own process, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", DAEMON, "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
