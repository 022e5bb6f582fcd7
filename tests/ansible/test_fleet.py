"""The playbooks against a fake fleet: a server host, an ENC host and six poles in two
zones, each a folder on this machine (tests/ansible/fleet.py says what is real).

The stages build on each other, in this order: a fresh install (site.yml and
provision.yml), a second run that changes nothing, a --check --diff run that writes
nothing, the broker's generated config and ACL in a real Mosquitto, a rollout in which
one pole of the second batch fails its health check, and a decommissioning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import free_port, wait_for_port

from .fleet import (
    ENC,
    POLES,
    SERVER,
    SYSTEM_SITE_POLE,
    TOKEN_KEYS_SCRIPT,
    ZONES,
    Fleet,
    PlaybookRun,
    build_release_wheel,
    have_tools,
    host_env,
    registry,
    softhsm_module,
)

# A fresh install of the eight hosts is a few minutes of playbook on two shared cores:
# more than the suite's default timeout for one test's fixtures.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

OLD, NEW = "1.0.0", "1.1.0"
CHECKED_HOSTS = ",".join([SERVER, ENC, *(poles[0] for poles in ZONES.values())])
FAILING_POLE = POLES[2]
"""Rollout batches are [1, 2, 25 %, ...] in inventory order: POLES[1:3] is the second."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    why = have_tools()
    if why:
        pytest.skip(why)
    module = softhsm_module()
    if module is None:
        pytest.skip("SoftHSM2 is not installed (apt install softhsm2)")
    from citywatch._poles import find_footage
    from edge import default_models_dir

    base = tmp_path_factory.mktemp("fleet")
    fleet = Fleet(
        base,
        module,
        broker_port=free_port(),
        scene_image=find_footage(base / "footage").upright,
        models_dir=default_models_dir(),
    )
    for version in (OLD, NEW):
        build_release_wheel(fleet.dist / version, version)
    fleet.write_inventory()
    yield fleet
    for what, seconds, cpu in fleet.logs:
        print(
            f"fleet: ansible-playbook {what}: {seconds:.1f} s wall, {cpu:.1f} s CPU",
            file=sys.stderr,
        )


@pytest.fixture(scope="module")
def fresh_install(fleet: Fleet) -> PlaybookRun:
    return fleet.run("site.yml", "provision.yml")


@pytest.fixture(scope="module")
def second_run(fleet: Fleet, fresh_install: PlaybookRun) -> PlaybookRun:
    return fleet.run("site.yml", "provision.yml")


@pytest.fixture(scope="module")
def check_run(fleet: Fleet, second_run: PlaybookRun) -> tuple[PlaybookRun, str, str]:
    before = fleet.tree_digest()
    # The server, the ENC and a pole of each zone: every role and play, in a third of the
    # time of the whole fleet; the digest still covers every host's folder.
    run = fleet.run(
        "site.yml",
        "--check",
        "--diff",
        "--limit",
        CHECKED_HOSTS,
        "-e",
        json.dumps({"base_chrony_servers": ["ntp-check.city.example"]}),
    )
    return run, before, fleet.tree_digest()


@pytest.fixture(scope="module")
def rollout_run(fleet: Fleet, check_run: object) -> PlaybookRun:
    for pole in POLES:
        fleet.set_health(pole, pole != FAILING_POLE)
    return fleet.run("rollout.yml", "-e", f"citywatch_release_version={NEW}")


def _fail(run: PlaybookRun) -> str:
    return run.output[-8000:]


def _token_key(
    fleet: Fleet, host: str, label: str, *, token: str = "citywatch-edge", pin: str = "token.pin"
) -> dict[str, object] | None:
    """The attributes of the secret key ``label`` in the host's token ``token`` (user PIN
    in /etc/citywatch/``pin``), read in a process of its own (SoftHSM2 reads
    SOFTHSM2_CONF once per process)."""
    root = fleet.root(host)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            TOKEN_KEYS_SCRIPT,
            fleet.softhsm_module,
            str(root / "etc/citywatch" / pin),
            token,
        ],
        env=host_env(fleet, host),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    keys = [
        {k: v for k, v in key.items() if k != "label"}
        for key in json.loads(done.stdout)
        if key["label"] == label
    ]
    return keys[0] if keys else None


# -- a fresh install -----------------------------------------------------------------------


def test_fresh_install_succeeds_on_every_host(fresh_install: PlaybookRun) -> None:
    assert fresh_install.returncode == 0, _fail(fresh_install)
    assert set(fresh_install.recap) == {SERVER, ENC, *POLES}
    assert not fresh_install.failed_hosts()
    assert all(r.changed > 0 for r in fresh_install.recap.values())


def test_every_host_runs_the_release(fleet: Fleet, fresh_install: PlaybookRun) -> None:
    for host in (SERVER, ENC, *POLES):
        assert fleet.current_release(host) == OLD, host
        assert fleet.installed_releases(host) == [OLD], host
        assert (fleet.root(host) / "opt/citywatch/current/bin/citywatch").exists()
        # The copied wheels are gone once the venv is built.
        assert not (fleet.root(host) / f"opt/citywatch/wheelhouse/{OLD}").exists()


def test_a_pole_s_venv_sees_the_system_s_packages_only_where_asked(
    fleet: Fleet, fresh_install: PlaybookRun
) -> None:
    for pole in POLES:
        cfg = (fleet.root(pole) / f"opt/citywatch/releases/{OLD}/pyvenv.cfg").read_text()
        wanted = "true" if pole == SYSTEM_SITE_POLE else "false"
        assert f"include-system-site-packages = {wanted}" in cfg, pole


def test_units_are_the_repository_s(fleet: Fleet, fresh_install: PlaybookRun) -> None:
    units = Path(__file__).resolve().parents[2] / "systemd"
    for host, unit in [
        (SERVER, "citywatch-server.service"),
        (ENC, "citywatch-enc.service"),
        *[(pole, "citywatch-edge.service") for pole in POLES],
    ]:
        installed = fleet.root(host) / "etc/systemd/system" / unit
        assert installed.read_bytes() == (units / unit).read_bytes(), host
    dropin = fleet.root(SERVER) / "etc/systemd/system/mosquitto.service.d/citywatch.conf"
    assert dropin.read_bytes() == (units / "mosquitto.service.d/citywatch.conf").read_bytes()


def test_every_pole_is_registered_in_its_zone(fleet: Fleet, fresh_install: PlaybookRun) -> None:
    devices = {d["uid"]: d for d in registry(fleet)}
    assert set(devices) == set(POLES)
    for zone, poles in ZONES.items():
        for pole in poles:
            assert devices[pole]["zone"] == zone
            assert devices[pole]["alg"] == "A256GCM"


def test_each_pole_s_key_is_in_its_token_and_not_extractable(
    fleet: Fleet, fresh_install: PlaybookRun
) -> None:
    for device in registry(fleet):
        key = _token_key(fleet, str(device["uid"]), f"citywatch-{device['kid_hex']}")
        assert key == {"extractable": False, "sensitive": True}, device["uid"]


def test_no_bundle_is_left_on_any_disk(fleet: Fleet, fresh_install: PlaybookRun) -> None:
    """Neither host keeps the bundle, and nothing Ansible wrote on the control machine
    (its local temporary folder and home are inside the fleet folder here) holds one."""
    assert not any((fleet.root(SERVER) / "run/citywatch-provision").iterdir())
    for pole in POLES:
        assert not any((fleet.root(pole) / "run/citywatch-provision").iterdir())
    holders = [
        p
        for p in fleet.base.rglob("*")
        if p.is_file() and not p.is_symlink() and b'"key_hex"' in p.read_bytes()
    ]
    assert holders == []


def test_pins_and_tls_keys_are_made_on_the_pole_and_kept_private(
    fleet: Fleet, fresh_install: PlaybookRun
) -> None:
    pins = set()
    for pole in POLES:
        config = fleet.root(pole) / "etc/citywatch"
        assert (config / "token.pin").stat().st_mode & 0o777 == 0o640
        assert (config / "token.so-pin").stat().st_mode & 0o777 == 0o600
        assert (config / "pki/device.key").stat().st_mode & 0o777 == 0o640
        assert (config / "edge.toml").stat().st_mode & 0o777 == 0o640
        pins.add((config / "token.pin").read_text())
    assert len(pins) == len(POLES)


def test_pole_certificates_name_their_kid_and_chain_to_the_district_ca(
    fleet: Fleet, fresh_install: PlaybookRun
) -> None:
    ca = fleet.root(SERVER) / "etc/citywatch/pki/ca.pem"
    for device in registry(fleet):
        cert = fleet.root(str(device["uid"])) / "etc/citywatch/pki/device.pem"
        subject = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-noout", "-subject"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert str(device["kid_hex"]) in subject
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca), str(cert)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_enc_holds_the_server_s_k_senc(fleet: Fleet, fresh_install: PlaybookRun) -> None:
    server_key = (fleet.root(SERVER) / "var/lib/citywatch/server/enc.key").read_bytes()
    held = list((fleet.root(ENC) / "etc/citywatch/enc-keys").glob("*.key"))
    assert len(held) == 1 and held[0].read_bytes() == server_key
    assert held[0].stat().st_mode & 0o777 == 0o600
    assert f"[servers.{held[0].stem}]" in (fleet.root(ENC) / "etc/citywatch/enc.toml").read_text()


def test_the_server_and_the_enc_keep_their_keys_in_their_tokens(
    fleet: Fleet, fresh_install: PlaybookRun
) -> None:
    """By default the roles write source = "pkcs11": the server's master key is on disk
    only wrapped under a non-extractable key of its SoftHSM2 token (made by the first
    open), no clear key file exists, and each token's PINs were made on its host, 0600."""
    import tomllib

    for host, config, section, data, clear, token in [
        (SERVER, "server.toml", "master_key", "server", "master.key", "citywatch-server"),
        (ENC, "enc.toml", "store_key", "enc", "store.key", "citywatch-enc"),
    ]:
        etc = fleet.root(host) / "etc/citywatch"
        key = tomllib.loads((etc / config).read_text())[section]
        assert key["source"] == "pkcs11", (host, key)
        assert key["token_label"] == token and key["pin_file"] == str(etc / f"{data}-token.pin")
        for pin in (f"{data}-token.pin", f"{data}-token.so-pin"):
            assert (etc / pin).stat().st_mode & 0o777 == 0o600, (host, pin)
        assert (etc / f"{data}-token.pin").stat().st_uid == os.getuid()
        assert not (fleet.root(host) / "var/lib/citywatch" / data / clear).exists(), host
    wrapped = fleet.root(SERVER) / "var/lib/citywatch/server/master.key.wrapped"
    assert wrapped.stat().st_mode & 0o777 == 0o600
    assert json.loads(wrapped.read_text())["kek"] == "citywatch-server-kek"
    kek = _token_key(
        fleet, SERVER, "citywatch-server-kek", token="citywatch-server", pin="server-token.pin"
    )
    assert kek == {"extractable": False, "sensitive": True}
    # The ENC's token is there and empty: the ENC makes its key at its first start.
    assert (
        _token_key(fleet, ENC, "citywatch-enc-kek", token="citywatch-enc", pin="enc-token.pin")
        is None
    )


def test_acl_gives_each_pole_only_its_own_topics(fleet: Fleet, fresh_install: PlaybookRun) -> None:
    acl = json.loads((fleet.root(SERVER) / "etc/mosquitto/citywatch-dynsec.json").read_text())
    roles = {r["rolename"]: r["acls"] for r in acl["roles"]}
    clients = {c["username"]: c for c in acl["clients"]}
    for device in registry(fleet):
        kid = device["kid_hex"]
        assert clients[kid]["roles"] == [{"rolename": f"pole-{kid}"}]
        assert {(a["acltype"], a["topic"]) for a in roles[f"pole-{kid}"]} == {
            ("publishClientSend", f"citywatch/v1/{kid}/up"),
            ("publishClientSend", f"citywatch/v1/{kid}/status"),
            ("subscribeLiteral", f"citywatch/v1/{kid}/down"),
            ("unsubscribeLiteral", f"citywatch/v1/{kid}/down"),
            ("publishClientReceive", f"citywatch/v1/{kid}/down"),
        }
    assert not (fleet.root(SERVER) / "etc/mosquitto/citywatch.acl").exists()


# -- idempotence and check mode ------------------------------------------------------------


def test_second_run_changes_nothing(second_run: PlaybookRun) -> None:
    assert second_run.returncode == 0, _fail(second_run)
    assert set(second_run.recap) == {SERVER, ENC, *POLES}
    assert second_run.changed_hosts() == {}, _fail(second_run)


def test_check_diff_run_shows_the_change_and_writes_nothing(
    check_run: tuple[PlaybookRun, str, str],
) -> None:
    run, before, after = check_run
    assert run.returncode == 0, _fail(run)
    # Every host would get the new NTP server...
    assert set(run.recap) == set(CHECKED_HOSTS.split(","))
    assert all(r.changed > 0 for r in run.recap.values()), run.recap
    assert "+server ntp-check.city.example iburst" in run.output
    # ...and nothing was written.
    assert after == before


# -- the broker's config in a real Mosquitto -----------------------------------------------


@pytest.fixture(scope="module")
def fleet_broker(
    fleet: Fleet, second_run: PlaybookRun, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """Mosquitto started on the server host's generated config, on a free loopback port."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists() or shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto and mosquitto-clients are not installed")
    port = fleet.broker_port
    conf = (fleet.root(SERVER) / "etc/mosquitto/conf.d/citywatch.conf").read_text()
    conf = re.sub(
        rf"^listener {fleet.broker_port} .*$", f"listener {port} 127.0.0.1", conf, flags=re.M
    )
    work = tmp_path_factory.mktemp("fleet-broker")
    # As root, Mosquitto would drop to its own user, who cannot read the fake host's keys.
    (work / "mosquitto.conf").write_text(conf + "\nuser root\nlog_dest stderr\n")
    proc = subprocess.Popen(
        [mosquitto, "-c", str(work / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _client(fleet: Fleet, host: str, name: str) -> list[str]:
    pki = fleet.root(host) / "etc/citywatch/pki"
    return [
        "--cafile",
        str(fleet.root(SERVER) / "etc/citywatch/pki/ca.pem"),
        "--cert",
        str(pki / f"{name}.pem"),
        "--key",
        str(pki / f"{name}.key"),
    ]


def test_broker_delivers_a_pole_s_uplink_but_not_a_forged_one(
    fleet: Fleet, fleet_broker: int
) -> None:
    """Pole A publishes to pole B's uplink, then to its own; the server's subscription
    gets only the second. Each publish completes (QoS 1) before the next starts, so a
    forged message let through would arrive first."""
    kids = {str(d["uid"]): str(d["kid_hex"]) for d in registry(fleet)}
    a, b = POLES[0], POLES[1]
    common = ["-h", "localhost", "-p", str(fleet_broker), "-q", "1"]
    # stdbuf: mosquitto_sub's stdout is block-buffered on a pipe, and the SUBACK line is
    # needed as it happens.
    sub = subprocess.Popen(
        [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            *common,
            *_client(fleet, SERVER, "server-client"),
            "-d",
            "-t",
            "$share/citywatch-server/citywatch/v1/+/up",
            "-v",
            "-C",
            "1",
            "-W",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sub.stdout is not None
        lines = []
        for line in sub.stdout:  # -d: wait until the broker has acknowledged the subscription
            lines.append(line)
            if "SUBACK" in line:
                break
        assert any("SUBACK" in line for line in lines), "".join(lines)
        for topic_kid, message in [(kids[b], "forged"), (kids[a], "genuine")]:
            done = subprocess.run(
                [
                    "mosquitto_pub",
                    *common,
                    *_client(fleet, a, "device"),
                    "-t",
                    f"citywatch/v1/{topic_kid}/up",
                    "-m",
                    message,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stderr
        out, _ = sub.communicate(timeout=90)
    finally:
        if sub.poll() is None:
            sub.kill()
    received = [line for line in out.splitlines() if line.startswith("citywatch/v1/")]
    assert received == [f"citywatch/v1/{kids[a]}/up genuine"], out


def _status_watcher(fleet: Fleet, port: int) -> subprocess.Popen[str]:
    """The server's subscription to the poles' presence ($share: it gets what is said
    from now on, no retained message), once the broker has acknowledged it."""
    sub = subprocess.Popen(
        [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            "-h",
            "localhost",
            "-p",
            str(port),
            "-q",
            "1",
            *_client(fleet, SERVER, "server-client"),
            "-d",
            "-v",
            "-W",
            "400",
            "-t",
            "$share/citywatch-server/citywatch/v1/+/status",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert sub.stdout is not None
    for line in sub.stdout:
        if "SUBACK" in line:
            return sub
    raise AssertionError("the broker never acknowledged the subscription")


def _next_status(sub: subprocess.Popen[str], kid: str) -> str:
    assert sub.stdout is not None
    for line in sub.stdout:
        if line.startswith(f"citywatch/v1/{kid}/status "):
            return line.split(" ", 1)[1].strip()
    return ""


def test_every_pole_s_config_is_complete_and_passes_the_check(
    fleet: Fleet, second_run: PlaybookRun
) -> None:
    """The edge role wrote each pole's whole config: the provisioned identity, and
    position, camera, GNSS, pre-screen, masks and outbox from the inventory."""
    import tomllib

    kids = {str(d["uid"]): str(d["kid_hex"]) for d in registry(fleet)}
    for i, pole in enumerate(POLES):
        path = fleet.root(pole) / "etc/citywatch/edge.toml"
        done = subprocess.run(
            [
                str(fleet.root(pole) / "opt/citywatch/current/bin/citywatch"),
                "edge",
                "config",
                "check",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "camera scene" in done.stdout and "1 privacy mask(s)" in done.stdout
        cfg = tomllib.loads(path.read_text())
        assert cfg["kid_hex"] == kids[pole] and cfg["uid"] == pole
        assert cfg["position"] == {"lat": 50.06 + 0.001 * (i % 3), "lon": 19.93 + 0.001 * (i % 3)}
        assert cfg["camera"]["driver"] == "scene" and cfg["gnss"] == {"driver": "none"}
        assert cfg["privacy"]["masks"][0]["points"][1] == [0.98, 0.05]
        assert cfg["outbox"] == {"max_incidents": 50}
        assert cfg["broker"]["port"] == fleet.broker_port
        assert cfg["broker"]["tls"]["cert_file"].endswith("/pki/device.pem")


def test_a_pole_runs_from_the_config_the_roles_wrote(fleet: Fleet, fleet_broker: int) -> None:
    """The pole's daemon, started as its unit starts it (the release's citywatch, the
    config the roles wrote, the token the roles filled), plays the scene, reaches the
    broker with the TLS identity the roles made and says so on its status topic, where
    the server sees it; stopped, it says "offline"."""
    from edge import model_status

    assert fleet.models_dir is not None
    if any(state != "ok" for state in model_status(fleet.models_dir).values()):
        pytest.skip(
            f"the pre-screen's models are not in {fleet.models_dir}: citywatch edge models install"
        )
    pole = POLES[3]  # a pole the rollout below never reaches
    root = fleet.root(pole)
    kid = next(str(d["kid_hex"]) for d in registry(fleet) if d["uid"] == pole)
    citywatch = str(root / "opt/citywatch/current/bin/citywatch")
    config = str(root / "etc/citywatch/edge.toml")
    env = {**os.environ, "SOFTHSM2_CONF": str(root / "etc/citywatch/softhsm2.conf")}
    watcher = _status_watcher(fleet, fleet_broker)
    daemon = subprocess.Popen(
        [citywatch, "edge", "run", "--config", config],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    status: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and daemon.poll() is None:
            done = subprocess.run(
                [citywatch, "edge", "status", "--json", "--require-broker", "--config", config],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode == 0:
                status = json.loads(done.stdout)
                pipeline = status.get("pipeline")
                if isinstance(pipeline, dict) and pipeline.get("last_frame_at"):
                    break
            time.sleep(1.0)
        assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
        assert status.get("healthy") is True, status
        assert status["uid"] == pole and status["kid_hex"] == kid
        assert _next_status(watcher, kid) == "online"
        daemon.terminate()
        daemon.wait(timeout=30)
        assert daemon.returncode == 0
        assert _next_status(watcher, kid) == "offline"
    finally:
        for proc in (daemon, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _healthz(url: str) -> int | None:
    """The status of GET ``url`` (TLS not verified: the ENC's self-signed certificate
    names its host, not 127.0.0.1); None while nothing answers."""
    import httpx

    try:
        return httpx.get(url, verify=False, timeout=5).status_code
    except httpx.HTTPError:
        return None


def _start_healthy(fleet: Fleet, host: str, command: list[str], url: str) -> subprocess.Popen[str]:
    """The host's service started as its unit starts it (the release's citywatch, the
    config the roles wrote, SOFTHSM2_CONF), once /healthz answers 200."""
    proc = subprocess.Popen(
        [str(fleet.root(host) / "opt/citywatch/current/bin/citywatch"), *command],
        env=host_env(fleet, host),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if _healthz(url) == 200:
            return proc
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    _out, err = proc.communicate(timeout=30)
    raise AssertionError(f"{host}: {url} never answered 200 (exit {proc.returncode})\n{err}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("host", "command", "wrapped"),
    [
        (ENC, ["enc", "run"], "var/lib/citywatch/enc/store.key.wrapped"),
        (SERVER, ["server", "run"], "var/lib/citywatch/server/master.key.wrapped"),
    ],
)
def test_the_server_and_the_enc_start_on_their_tokens(
    fleet: Fleet, fleet_broker: int, host: str, command: list[str], wrapped: str
) -> None:
    """Started from what the roles wrote, the service unwraps its key with the token and
    answers /healthz (the server: connected to the broker with the identity the roles
    made); the ENC makes its wrapped key at its first start; a second start reuses the
    wrapped key, and no key ever sits in clear on disk."""
    config = "server.toml" if host == SERVER else "enc.toml"
    argv = [*command, "--config", str(fleet.root(host) / "etc/citywatch" / config)]
    url = (
        f"http://127.0.0.1:{fleet.admin_port}/healthz"
        if host == SERVER
        else f"https://127.0.0.1:{fleet.enc_port}/healthz"
    )
    path = fleet.root(host) / wrapped
    clear = path.with_name(path.name.removesuffix(".wrapped"))
    seen = []
    for _start in range(2):
        proc = _start_healthy(fleet, host, argv, url)
        try:
            assert path.stat().st_mode & 0o777 == 0o600
            assert not clear.exists()
            seen.append(path.read_bytes())
        finally:
            _stop(proc)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert seen[0] == seen[1]
    if host == SERVER:
        # The device keys sealed under the master key the provisioning made still open.
        assert {d["uid"] for d in registry(fleet)} == set(POLES)


def test_the_enc_keeps_its_key_in_a_file_where_the_operator_chooses_it(
    fleet: Fleet, second_run: PlaybookRun
) -> None:
    """enc_store_key_source: file, the operator's choice: the role writes source = "file"
    and the ENC makes its key in clear there (0600) at its first start."""
    import tomllib

    run = fleet.run("site.yml", "--limit", ENC, "-e", json.dumps({"enc_store_key_source": "file"}))
    assert run.returncode == 0, _fail(run)
    config = fleet.root(ENC) / "etc/citywatch/enc.toml"
    clear = fleet.root(ENC) / "var/lib/citywatch/enc/store.key"
    assert tomllib.loads(config.read_text())["store_key"] == {"source": "file", "file": str(clear)}
    proc = _start_healthy(
        fleet,
        ENC,
        ["enc", "run", "--config", str(config)],
        f"https://127.0.0.1:{fleet.enc_port}/healthz",
    )
    try:
        assert clear.stat().st_mode & 0o777 == 0o600
        assert len(bytes.fromhex(clear.read_text().strip())) == 32
    finally:
        _stop(proc)


def test_broker_refuses_a_client_without_a_district_certificate(
    fleet: Fleet, fleet_broker: int, tmp_path: Path
) -> None:
    key, cert = tmp_path / "rogue.key", tmp_path / "rogue.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=rogue",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=True,
    )
    ca = fleet.root(SERVER) / "etc/citywatch/pki/ca.pem"
    done = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "localhost",
            "-p",
            str(fleet_broker),
            "--cafile",
            str(ca),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "-t",
            "citywatch/v1/x/up",
            "-m",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0


# -- a rollout with a failing pole ---------------------------------------------------------


def test_rollout_stops_after_the_batch_with_the_failing_pole(rollout_run: PlaybookRun) -> None:
    assert rollout_run.returncode != 0, _fail(rollout_run)
    assert rollout_run.failed_hosts() == {FAILING_POLE}, _fail(rollout_run)
    assert f"{FAILING_POLE} failed on release {NEW}" in rollout_run.output
    # Only the canary and the second batch ran; the later batches never started.
    assert set(POLES[:3]) <= set(rollout_run.recap)
    assert not set(POLES[3:]) & set(rollout_run.recap)


def test_rollout_rolls_the_failing_pole_back(fleet: Fleet, rollout_run: PlaybookRun) -> None:
    assert fleet.current_release(FAILING_POLE) == OLD
    assert sorted(fleet.installed_releases(FAILING_POLE)) == [OLD, NEW]


def test_rollout_moved_the_canary_and_the_healthy_second_batch_pole(
    fleet: Fleet, rollout_run: PlaybookRun
) -> None:
    for pole in POLES[:2]:
        assert fleet.current_release(pole) == NEW, pole
        assert os.readlink(fleet.root(pole) / "opt/citywatch/previous") == f"releases/{OLD}"
    assert fleet.current_release(SERVER) == NEW


def test_rollout_left_the_later_batches_untouched(fleet: Fleet, rollout_run: PlaybookRun) -> None:
    for pole in POLES[3:]:
        assert fleet.current_release(pole) == OLD, pole
        assert fleet.installed_releases(pole) == [OLD], pole
        assert not (fleet.root(pole) / "opt/citywatch/previous").exists()


# -- decommissioning -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def decommissioned(fleet: Fleet, rollout_run: PlaybookRun) -> tuple[PlaybookRun, PlaybookRun, str]:
    pole = POLES[-1]
    kid = next(str(d["kid_hex"]) for d in registry(fleet) if d["uid"] == pole)
    refused = fleet.run("decommission.yml")
    done = fleet.run("decommission.yml", "--limit", pole)
    return refused, done, kid


def test_decommission_refuses_to_run_without_limit(
    fleet: Fleet, decommissioned: tuple[PlaybookRun, PlaybookRun, str]
) -> None:
    refused, _, _ = decommissioned
    assert refused.returncode != 0
    assert "needs --limit" in refused.output


def test_decommission_forgets_the_pole_everywhere(
    fleet: Fleet, decommissioned: tuple[PlaybookRun, PlaybookRun, str]
) -> None:
    _, done, kid = decommissioned
    pole = POLES[-1]
    assert done.returncode == 0, _fail(done)
    assert {d["uid"] for d in registry(fleet)} == set(POLES[:-1])
    acl = (fleet.root(SERVER) / "etc/mosquitto/citywatch-dynsec.json").read_text()
    assert kid not in acl
    root = fleet.root(pole)
    for gone in (
        "var/lib/citywatch/tokens",
        "etc/citywatch/edge.toml",
        "etc/citywatch/pki/device.key",
        "var/lib/citywatch/edge",
    ):
        assert not (root / gone).exists(), gone
