"""CityWatch's units under a real systemd: a Debian bookworm container booted with
``systemd-nspawn --boot`` (systemd is its PID 1), the release installed as a venv from a
``pip wheel`` wheelhouse of the project, the units copied from systemd/ as they ship, and
a drop-in that shortens ``WatchdogSec=`` so that three periods pass in seconds.

For the server and the ENC: the unit reaches active (``READY=1``), stays up past three
watchdog periods with the same main process (``WATCHDOG=1`` arrives), is killed and
restarted by systemd when its process is frozen with SIGSTOP (no ``WATCHDOG=1``), stops
cleanly with ``systemctl stop`` (exit status 0, no SIGKILL), and logs to journald with
syslog priorities under its own identifier.

Every wait is bounded; the container is powered off, then killed by pid, even when a
check fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ansible.poles import cache_dir
from tests.support.rootfs import copy_sources
from tests.support.world import jpeg
from tests.systemd.container import Container, build_image, missing_tools

PROJECT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
WATCHDOG_S = 2
"""WatchdogSec= of the drop-in: short, so three periods pass in six seconds."""
SERVER_KID = "5e5e5e5e00000001"
MODELS = PROJECT / "var" / "models"
RELEASE_EXTRAS = ("server", "enc", "edge")
"""What the server and the ENC hosts install, where pyproject.toml splits it out."""


def _requirement() -> str:
    extras = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    wanted = [e for e in RELEASE_EXTRAS if e in extras]
    return f"citywatch[{','.join(wanted)}]" if wanted else "citywatch"


pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _pip_wheel(dest: Path, *args: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(dest),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _dependencies() -> set[str]:
    """The requirements of the project and of its release extras, the extras' references
    to one another (``citywatch[edge]``) followed."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    out: set[str] = set(project.get("dependencies", []))
    todo, seen = [e for e in RELEASE_EXTRAS if e in extras], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in extras[extra]:
            if req.replace(" ", "").startswith("citywatch["):
                todo += [e.strip() for e in req.split("[", 1)[1].split("]", 1)[0].split(",")]
            else:
                out.add(req)
    return out


def build_wheelhouse(work: Path) -> Path:
    """The project's wheel (built now, from the sources) and every dependency's (cached
    per dependency list: a second run downloads nothing)."""
    deps = sorted(_dependencies())
    constraints = PROJECT / "constraints.txt"
    pinned = constraints.read_text() if constraints.is_file() else ""
    key = hashlib.sha256(repr((sys.version_info[:2], deps, pinned)).encode()).hexdigest()[:16]
    deps_dir = cache_dir() / f"wheelhouse-{key}"
    if not (deps_dir / ".complete").exists():
        building = deps_dir.with_name(deps_dir.name + f".building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        constraints = PROJECT / "constraints.txt"
        pins = ["-c", str(constraints)] if constraints.is_file() else []
        _pip_wheel(building, *pins, *deps)
        (building / ".complete").write_text("\n".join(deps) + "\n")
        shutil.rmtree(deps_dir, ignore_errors=True)
        building.rename(deps_dir)
    house = work / "wheelhouse"
    shutil.copytree(deps_dir, house)
    src = copy_sources(work / "src")
    _pip_wheel(house, "--no-deps", str(src))
    return house


def wait_for(
    what: str, predicate: Callable[[], bool], timeout: float, detail: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{detail()}")


SERVER_TOML = f"""\
data_dir = "/var/lib/citywatch/server"
[broker]
host = "127.0.0.1"
port = 1883
[enc]
base_url = "http://127.0.0.1:8700"
server_kid = "{SERVER_KID}"
key_file = "/etc/citywatch/keys/enc-server-1.key"
[admin]
host = "127.0.0.1"
port = 8600
"""

ENC_TOML = f"""\
data_dir = "/var/lib/citywatch/enc"
[http]
host = "127.0.0.1"
port = 8700
[servers.{SERVER_KID}]
key_file = "/etc/citywatch/keys/enc-server-1.key"
name = "trusted server 1"
"""

MOSQUITTO_CONF = """\
listener 1883 127.0.0.1
allow_anonymous true
persistence false
"""


def _prepare_root(root: Path, wheelhouse: Path) -> None:
    """What the release and the roles put on a host, written before boot."""
    shutil.copytree(wheelhouse, root / "var/tmp/wheelhouse")
    units = root / "etc/systemd/system"
    for unit in sorted((PROJECT / "systemd").glob("*.service")):
        shutil.copy(unit, units / unit.name)
        dropin = units / f"{unit.name}.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "test-watchdog.conf").write_text(
            f"# The test's short watchdog period.\n[Service]\nWatchdogSec={WATCHDOG_S}s\n"
            "RestartSec=1s\n"
        )
    etc = root / "etc/citywatch"
    (etc / "keys").mkdir(parents=True, exist_ok=True)
    (etc / "server.toml").write_text(SERVER_TOML)
    (etc / "enc.toml").write_text(ENC_TOML)
    (etc / "keys/enc-server-1.key").write_text(secrets.token_hex(32) + "\n")
    (root / "etc/mosquitto/conf.d/citywatch-test.conf").write_text(MOSQUITTO_CONF)
    # The pole: a provisioning bundle (as the server would write it), the scene player's
    # street in place of the camera.
    bundle = etc / "bundle.json"
    bundle.write_text(
        json.dumps(
            {
                "uid": "pole-unit-1",
                "kid_hex": secrets.token_hex(8),
                "alg": "A256GCM",
                "key_hex": secrets.token_hex(32),
                "zone": "z1",
                "lat": 52.2,
                "lon": 21.0,
                "server": {"host": "127.0.0.1", "port": 1883},
            }
        )
    )
    bundle.chmod(0o600)
    (etc / "scene").mkdir()
    (etc / "scene/street.jpg").write_bytes(jpeg((320, 240)))
    # The models as the roles install them (the server's photo check loads them).
    models = root / "var/lib/citywatch/models"
    models.mkdir(parents=True)
    for model in MODELS.glob("*.tflite"):
        shutil.copy(model, models / model.name)


SETUP_SCRIPT = f"""\
set -e
useradd --system --home-dir /var/lib/citywatch --shell /usr/sbin/nologin citywatch
python3 -m venv /opt/citywatch/releases/{VERSION}
/opt/citywatch/releases/{VERSION}/bin/pip install --quiet --no-index \\
    --find-links /var/tmp/wheelhouse '{_requirement()}'
ln -sfn /opt/citywatch/releases/{VERSION} /opt/citywatch/current
chown -R citywatch:citywatch /etc/citywatch/keys /var/lib/citywatch
chmod 700 /etc/citywatch/keys
chmod 600 /etc/citywatch/keys/enc-server-1.key
touch /etc/citywatch/softhsm2.conf
systemctl daemon-reload
systemctl start mosquitto.service
"""


EDGE_SCRIPT = """\
set -e
# As on a Pi: the group the unit gives the daemon for the secure element's bus.
getent group i2c >/dev/null || groupadd --system i2c
install -d -o citywatch -g citywatch -m 0700 /var/lib/citywatch/tokens
printf 'directories.tokendir = /var/lib/citywatch/tokens\\nobjectstore.backend = file\\n' \\
    > /etc/citywatch/softhsm2.conf
export SOFTHSM2_CONF=/etc/citywatch/softhsm2.conf
softhsm2-util --init-token --free --label citywatch --pin 246810 --so-pin 13579111 >/dev/null
printf '246810\\n' > /etc/citywatch/token.pin
chown root:citywatch /etc/citywatch/token.pin
chmod 640 /etc/citywatch/token.pin
/opt/citywatch/current/bin/citywatch edge provision --bundle /etc/citywatch/bundle.json \\
    --config-out /etc/citywatch/edge.toml --module /usr/lib/softhsm/libsofthsm2.so \\
    --token-label citywatch --pin-file /etc/citywatch/token.pin \\
    --state-dir /var/lib/citywatch/edge --delete-bundle >/dev/null
printf '\\n[camera]\\ndriver = "scene"\\nfps = 5.0\\n' >> /etc/citywatch/edge.toml
printf '[[camera.timeline]]\\nat = 0.0\\nplay = "%s"\\n' /etc/citywatch/scene/street.jpg \\
    >> /etc/citywatch/edge.toml
chmod 644 /etc/citywatch/edge.toml
chown -R citywatch:citywatch /var/lib/citywatch
"""


@pytest.fixture(scope="module")
def host() -> Iterator[Container]:
    why = missing_tools()
    if why:
        pytest.skip(why)
    if not any(MODELS.glob("*.tflite")):
        pytest.skip(f"no models in {MODELS}: run `citywatch server models install`")
    work = Path(os.environ.get("CITYWATCH_TEST_CACHE", "/var/tmp/citywatch-tests")) / (
        f"units-{os.getpid()}"
    )
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    container: Container | None = None
    try:
        image = build_image()
        wheelhouse = build_wheelhouse(work)
        container = Container.copy_of(image, f"cwunits{os.getpid() % 100000}", work)
        _prepare_root(container.root, wheelhouse)
        container.boot(timeout=120)
        container.run("sh", "-c", SETUP_SCRIPT, timeout=900)
        container.run("sh", "-c", EDGE_SCRIPT, timeout=300)
        yield container
    finally:
        if container is not None:
            container.terminate()
        shutil.rmtree(work, ignore_errors=True)


def _show(c: Container, unit: str, *props: str) -> dict[str, str]:
    out = c.run("systemctl", "show", unit, *(f"--property={p}" for p in props), timeout=20)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _journal(c: Container, unit: str, since: str = "") -> list[dict[str, str]]:
    args = ["journalctl", "--no-pager", "-o", "json", "-u", unit]
    if since:
        args += ["--since", since]
    out = c.run(*args, check=False, timeout=30)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _messages(c: Container, unit: str, lines: int = 80) -> str:
    return c.run("journalctl", "--no-pager", "-u", unit, "-n", str(lines), check=False, timeout=30)


@pytest.mark.parametrize(
    ("unit", "logger"),
    [
        ("citywatch-server.service", "citywatch.server"),
        ("citywatch-enc.service", "citywatch.enc"),
        ("citywatch-edge.service", "citywatch.edge"),
    ],
)
def test_a_unit_is_supervised_by_systemd(host: Container, unit: str, logger: str) -> None:
    c = host
    detail = lambda: _messages(c, unit)  # noqa: E731
    c.run("systemctl", "start", "--no-block", unit, timeout=30)
    wait_for(
        f"{unit} active",
        lambda: _show(c, unit, "ActiveState")["ActiveState"] == "active",
        timeout=120,
        detail=detail,
    )
    first = _show(c, unit, "MainPID", "NRestarts", "WatchdogUSec", "Type")
    assert first["Type"] == "notify"
    assert first["WatchdogUSec"] == f"{WATCHDOG_S}s", first

    # Three watchdog periods (and one more): WATCHDOG=1 keeps it, same process.
    time.sleep(3 * WATCHDOG_S + 1)
    later = _show(c, unit, "ActiveState", "SubState", "MainPID", "NRestarts")
    assert later["ActiveState"] == "active", detail()
    assert later["MainPID"] == first["MainPID"] and later["NRestarts"] == first["NRestarts"], (
        f"{later}\n{detail()}"
    )

    # The process frozen: no WATCHDOG=1, so systemd kills it (SIGABRT) and starts another.
    c.run("sh", "-c", 'kill -STOP "$1"', "sh", first["MainPID"])  # the shell's own kill
    wait_for(
        f"{unit} restarted after SIGSTOP",
        lambda: (
            (s := _show(c, unit, "ActiveState", "MainPID", "NRestarts"))["ActiveState"] == "active"
            and s["MainPID"] not in ("0", first["MainPID"])
            and int(s["NRestarts"]) > int(first["NRestarts"])
        ),
        timeout=15 * WATCHDOG_S + 60,
        detail=detail,
    )
    assert "Watchdog timeout" in _messages(c, unit)

    # The new process is fed as well.
    restarted = _show(c, unit, "MainPID", "NRestarts")
    time.sleep(3 * WATCHDOG_S + 1)
    assert _show(c, unit, "MainPID", "NRestarts") == restarted, f"{restarted}\n{detail()}"

    # systemctl stop: SIGTERM, STOPPING=1, exit status 0 well before TimeoutStopSec.
    kills_before = _messages(c, unit, lines=2000).count("SIGKILL")
    t0 = time.monotonic()
    c.run("systemctl", "stop", unit, timeout=90)
    took = time.monotonic() - t0
    done = _show(c, unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert done["ActiveState"] == "inactive", done
    assert done["Result"] == "success", f"{done}\n{detail()}"
    assert done["ExecMainStatus"] == "0", f"{done}\n{detail()}"
    assert took < 30, f"stopping took {took:.1f} s"
    # (the frozen process was killed by the watchdog; the stop itself killed nothing)
    assert _messages(c, unit, lines=2000).count("SIGKILL") == kills_before, detail()

    # Its own records are in the journal, under its identifier, with syslog priorities.
    records = [r for r in _journal(c, unit) if str(r.get("MESSAGE", "")).startswith(logger)]
    assert records, detail()
    ident = unit.removesuffix(".service")
    assert {r.get("SYSLOG_IDENTIFIER") for r in records} == {ident}
    priorities = {r.get("PRIORITY") for r in records}
    assert "6" in priorities, priorities  # info
    assert priorities <= {"2", "3", "4", "5", "6", "7"}
