"""Chaos across the stack: poles report for minutes while their daemons, the server
replicas, the ENC, the broker and the database are killed at random moments; then every
incident a pole stored must be at the ENC exactly once.

What runs (all on loopback, in one temporary folder):

- ``--poles`` street poles, each a real ``citywatch edge run`` daemon
  (``citywatch._poles.EdgePole``): a scene-player camera alternating a person sitting
  and the same person lying on the floor (the footage that ships with CityWatch), the
  real pre-screen model, the key in a SoftHSM2 token, the durable outbox (SQLite, WAL,
  ``synchronous=FULL``). Each pole is its own process group (``start_new_session``).
- two trusted-server replicas (``citywatch server run``) sharing one PostgreSQL;
- the ENC (``citywatch enc run``, SQLite);
- Mosquitto.

Every component is watched like a service manager would: when one is down and was not
killed on purpose a moment ago, it is started again (a server that finds its database
or broker gone may exit; it comes back like ``Restart=on-failure``).

At ``--kills`` random moments (seeded: ``--seed``, printed) one of them is killed with
SIGKILL and started again after a random short delay: a pole's daemon (its main
process), a server replica, the ENC, the broker, PostgreSQL's postmaster, or, a few
times, a power cut of a pole: SIGKILL to the pole's whole process group at once, and a
longer delay before it comes back.

What a pole stored comes from the pole itself: before its first start the outbox
database gets a table ``chaos_stored`` and a trigger that copies the capture id of every
incident the daemon inserts into it, in the daemon's own transaction (so a row exists
exactly when the daemon's commit did). At the end the poles' cameras see an empty
street (each daemon restarted cleanly with that timeline), everything is brought up,
and the script waits until every outbox is empty and the ENC has what was stored. Then
it compares, by capture id and incident id (``protocol.incident_id_for(kid, cid)``),
the poles' records with the ENC's database: ``lost`` = stored by a pole but not at the
ENC; ``duplicated`` = incidents the ENC recorded receiving more than once (its
``received`` audit entries; ``enc_alerts`` is keyed by incident id). Alerts at the ENC
that no pole recorded are counted as ``unexpected``.

The last line printed is JSON: ``{"kills", "incidents", "lost", "duplicated", ...}``.
Exit status 1 if anything was lost or duplicated (or nothing was stored at all).

    .venv/bin/python bench/chaos.py [--poles 10] [--seconds 240] [--kills 100] [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import tomli_w  # noqa: E402

import protocol as p  # noqa: E402
from citywatch._poles import EdgePole, SceneFootage, find_footage  # noqa: E402
from citywatch._services import start_mosquitto  # noqa: E402
from tests.integration.server_harness import ServerSetup, make_server  # noqa: E402
from tests.support.services import Broker, Postgres, free_port, start_postgres  # noqa: E402

ZONE = "chaos"
OUTBOX = "outbox.sqlite3"
JOURNAL = """
CREATE TABLE IF NOT EXISTS chaos_stored (cid BLOB PRIMARY KEY, stored_at INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS chaos_stored_copy AFTER INSERT ON incidents
BEGIN INSERT INTO chaos_stored (cid, stored_at) VALUES (NEW.cid, NEW.stored_at); END;
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes we start and kill ------------------------------------------------------


@dataclass
class Service:
    """A long-running process of ours: started, SIGKILLed, started again."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    down_until: float = 0.0
    """While killed on purpose: when to start it again (monotonic)."""
    starts: int = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BrokerService:
    """Mosquitto on a fixed port, restartable."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker: Broker = start_mosquitto(workdir)
        self.port = self.broker.port
        self.down_until = 0.0

    def alive(self) -> bool:
        return self.broker.process.poll() is None

    def kill(self) -> None:
        self.broker.kill()

    def start(self) -> None:
        self.broker = start_mosquitto(self.workdir, port=self.port)

    def stop(self) -> None:
        self.broker.stop()


class PostgresService:
    """The PostgreSQL cluster of ``tests.support.services.start_postgres``; killed by
    SIGKILL to its postmaster (its backends then exit by themselves), restarted with
    ``pg_ctl start`` on the same port and data directory."""

    def __init__(self) -> None:
        # In a folder of its own: PostgreSQL runs as its own user when we are root.
        self.pg: Postgres = start_postgres()
        self.down_until = 0.0
        self.base = self.pg.datadir.parent

    def _pid(self) -> int | None:
        try:
            return int((self.pg.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def kill(self) -> None:
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def start(self) -> None:
        cmd = [
            str(self.pg.bindir / "pg_ctl"),
            "-D",
            str(self.pg.datadir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.base / "pg.log"),
            "-o",
            f"-p {self.pg.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.base} -c fsync=off",
            "start",
        ]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.pg.user, "--", *cmd]
        # Orphaned backends of a killed postmaster may hold the port for a moment.
        for _ in range(20):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(0.5)
        log(f"postgres did not restart: {r.stderr.strip()[-300:]}")

    def stop(self) -> None:
        if not self.alive():
            self.start()
        self.pg.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Pole:
    """A pole: its ``EdgePole`` (daemon, folder, token) and what we know of it."""

    edge: EdgePole
    kid: bytes
    down_until: float = 0.0
    starts: int = 0

    def alive(self) -> bool:
        return self.edge.alive()

    def start(self) -> None:
        self.edge.start()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL to the daemon process only."""
        self.edge.kill()

    def power_cut(self) -> None:
        """Everything of the pole at once: SIGKILL to its whole process group."""
        proc = self.edge.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    @property
    def outbox(self) -> Path:
        return self.edge.state_dir / OUTBOX

    def stored(self) -> list[bytes]:
        """Capture ids of every incident this pole stored, from its own database."""
        with contextlib.closing(sqlite3.connect(self.outbox, timeout=30)) as db:
            return [bytes(r[0]) for r in db.execute("SELECT cid FROM chaos_stored")]

    def waiting(self) -> int:
        with contextlib.closing(sqlite3.connect(self.outbox, timeout=30)) as db:
            return int(db.execute("SELECT count(*) FROM incidents").fetchone()[0])


# -- the district ---------------------------------------------------------------------


def alternating(footage: SceneFootage, seconds: float) -> list[dict[str, Any]]:
    """The person sits for a while, lies on the floor for a while, and again."""
    timeline, t = [], 0.0
    while t < seconds:
        timeline.append({"at": t, "play": str(footage.upright)})
        timeline.append({"at": t + 4.0, "play": str(footage.lying)})
        t += 14.0
    return timeline


@dataclass
class District:
    workdir: Path
    n_poles: int
    seconds: float
    rng: random.Random
    broker: BrokerService | None = None
    postgres: PostgresService | None = None
    setup: ServerSetup | None = None
    servers: list[Service] = field(default_factory=list)
    enc: Service | None = None
    enc_data: Path | None = None
    poles: list[Pole] = field(default_factory=list)
    footage: SceneFootage | None = None
    exits: Counter[str] = field(default_factory=Counter)
    """Components that exited by themselves (not killed), and how often."""

    def cli(self, *args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "citywatch", *args],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        if r.returncode != 0:
            raise RuntimeError(f"citywatch {' '.join(args[:3])}: {(r.stderr or r.stdout)[-800:]}")
        return r.stdout

    def start(self) -> None:
        w = self.workdir
        self.footage = find_footage(w / "footage")
        self.broker = BrokerService(w / "broker")
        self.postgres = PostgresService()
        db = self.postgres.pg.create_database("server")
        enc_port = free_port()
        # Every report alerts on its own: no fusion, no blocking, threshold 0 (the photo
        # check still runs on every photo; what is checked here is delivery, not it).
        setup = make_server(
            w,
            self.broker.broker,
            enc_url=f"http://127.0.0.1:{enc_port}",
            db_url=db,
            timing={"poll_s": 0.5, "rate_limit_burst": 100, "rate_limit_per_minute": 600.0},
            verification={
                "fuse_within_m": 0,
                "block_after_dismissed": 0,
                "threshold": 0.0,
                "workers": 0,
            },
            enc={"connect_timeout_s": 1.0, "request_timeout_s": 3.0},
        )
        self.setup = setup
        second = setup.variant("replica-b")
        env = dict(os.environ)
        for name, s in (("server-a", setup), ("server-b", second)):
            self.servers.append(
                Service(
                    name,
                    [sys.executable, "-m", "citywatch", "server", "run", "--config", str(s.config)],
                    w / f"{name}.log",
                    env=env,
                )
            )
        self.enc_data = w / "enc-data"
        enc_conf = self._enc_config(enc_port, setup)
        self.enc = Service(
            "enc",
            [sys.executable, "-m", "citywatch", "enc", "run", "--config", str(enc_conf)],
            w / "enc.log",
            env=env,
        )
        self._poles()
        self.enc.start()
        # One replica after the other: the first start creates the admin token.
        for replica in self.servers:
            replica.start()
            self._wait_http(
                f"http://127.0.0.1:{self._admin_port(replica)}/healthz", replica.name, 180
            )
        self._wait_http(f"http://127.0.0.1:{enc_port}/healthz", "ENC")
        until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)).isoformat(timespec="seconds")
        self.cli(
            "server",
            "window",
            "open",
            "--config",
            str(setup.config),
            "--zone",
            ZONE,
            "--until",
            until,
            "--actor",
            "chaos",
        )
        for pole in self.poles:
            pole.start()
        self._wait_poles_up(timeout=240)

    def _admin_port(self, s: Service) -> int:
        cfg = tomllib.loads(Path(s.cmd[-1]).read_text())
        return int(cfg["admin"]["port"])

    def _enc_config(self, port: int, setup: ServerSetup) -> Path:
        data = tomllib.loads(self.cli("enc", "config", "example"))
        data["data_dir"] = str(self.enc_data)
        data["http"]["port"] = port
        data["servers"] = {
            setup.server_kid.hex(): {
                "key_file": str(setup.dir / "data" / "enc.key"),
                "name": "chaos server",
            }
        }
        data["cap"]["status"] = "Exercise"
        path = self.workdir / "enc.toml"
        path.write_text(tomli_w.dumps(data))
        return path

    def _poles(self) -> None:
        from hardware import create_softhsm_tokens

        assert self.setup is not None and self.footage is not None
        labels = [f"pole-{i:02d}" for i in range(self.n_poles)]
        conf, tokens = create_softhsm_tokens(self.workdir / "softhsm", labels)
        for i, (label, token) in enumerate(zip(labels, tokens, strict=True)):
            # Poles 300 m apart, each a scene of its own.
            lat, lon = 52.20 + 0.003 * i, 21.00
            with contextlib.redirect_stdout(sys.stderr):  # stdout is for the results
                bundle = self.setup.add_device(f"CHAOS-{i:04d}", ZONE)
            edge = EdgePole(
                self.workdir / label,
                bundle.uid,
                lat,
                lon,
                token,
                conf,
                alternating(self.footage, self.seconds + 600),
                fps=3.0,
                gps=False,
                prescreen={
                    "cooldown_seconds": 0.0,
                    "person_down": {"still_seconds": 2.0},
                    "model": {"threads": 1},
                },
            )
            edge.provision(self.setup.dir / f"{bundle.uid}.json")
            self._journal(edge)
            self.poles.append(Pole(edge, bundle.kid))

    @staticmethod
    def _journal(edge: EdgePole) -> None:
        """The outbox as the daemon makes it, plus the record of what it stores."""
        from edge._outbox import Outbox

        edge.state_dir.mkdir(parents=True, exist_ok=True)
        with Outbox(edge.state_dir / OUTBOX, cipher=p.AesGcmCipher(secrets.token_bytes(32))):
            pass
        with contextlib.closing(sqlite3.connect(edge.state_dir / OUTBOX)) as db:
            db.executescript(JOURNAL)

    def _wait_http(self, url: str, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")

    def _wait_poles_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [pole.edge.status() or {} for pole in self.poles]
            for pole in self.poles:
                if pole.alive():
                    continue
                # A start can fail on a loaded machine (a token busy): start it again, as
                # the supervisor does later; give up only on a pole that keeps failing.
                if pole.starts >= 4:
                    raise RuntimeError(
                        f"pole daemon {pole.edge.uid} exited {pole.starts} "
                        f"times at start: {pole.edge.log()[-1500:]}"
                    )
                self.exits[f"start-{pole.edge.uid}"] += 1
                time.sleep(1.0)
                pole.start()
            if all((s.get("monitoring") or {}).get("active") for s in states):
                return
            time.sleep(0.5)
        raise RuntimeError("the poles did not all confirm the monitoring window")

    # -- chaos ------------------------------------------------------------------------

    def targets(self) -> dict[str, Any]:
        assert self.broker and self.postgres and self.enc
        t: dict[str, Any] = {"broker": self.broker, "database": self.postgres, "enc": self.enc}
        for s in self.servers:
            t[s.name] = s
        for i, pole in enumerate(self.poles):
            t[f"pole-{i:02d}"] = pole
        return t

    def supervise(self) -> None:
        """Start again whatever is down and due (a killed one after its delay, one that
        exited by itself at once)."""
        now = time.monotonic()
        for name, comp in self.targets().items():
            if comp.alive():
                continue
            if comp.down_until == 0.0:  # exited by itself: again in a second
                comp.down_until = now + 1.0
                self.exits[name] += 1
            elif now >= comp.down_until:
                comp.start()
                comp.down_until = 0.0
                if name in ("broker", "database"):
                    log(f"{name} started again")

    def stop(self) -> None:
        for pole in self.poles:
            with contextlib.suppress(Exception):
                pole.edge.close()
        for s in [*self.servers, self.enc]:
            if s is not None:
                s.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop()

    # -- the end ----------------------------------------------------------------------

    def calm(self) -> None:
        """The cameras see an empty street from now on: each daemon stops cleanly and
        starts again with that timeline (its outbox is kept)."""
        assert self.footage is not None
        for pole in self.poles:
            pole.edge.stop()
            cfg = tomllib.loads(pole.edge.config.read_text())
            cfg["camera"]["timeline"] = [{"at": 0.0, "play": str(self.footage.upright)}]
            pole.edge.config.write_text(tomli_w.dumps(cfg))
            pole.down_until = 0.0
            pole.start()

    def enc_received(self) -> tuple[set[str], Counter[str]]:
        assert self.enc_data is not None
        path = self.enc_data / "enc.sqlite3"
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        ) as db:
            alerts = {r[0] for r in db.execute("SELECT incident_id FROM enc_alerts")}
            received = Counter(
                {
                    r[0]: int(r[1])
                    for r in db.execute(
                        "SELECT incident_id, count(*) FROM enc_audit WHERE action = 'received' "
                        "GROUP BY incident_id"
                    )
                }
            )
            cap = Counter(
                {
                    r[0]: int(r[1])
                    for r in db.execute(
                        "SELECT incident_id, count(*) FROM enc_cap_messages "
                        "WHERE msg_type = 'Alert' "
                        "GROUP BY incident_id"
                    )
                }
            )
        # Received twice, or passed on twice as a CAP Alert: either is a duplicate.
        return alerts, received | cap

    def stored(self) -> dict[str, tuple[str, bytes]]:
        """incident id -> (pole uid, cid) of everything the poles stored."""
        out = {}
        for pole in self.poles:
            for cid in pole.stored():
                out[p.incident_id_for(pole.kid, cid)] = (pole.edge.uid, cid)
        return out

    def settled(self) -> bool:
        if not all(pole.alive() for pole in self.poles):
            return False
        if any(pole.waiting() for pole in self.poles):
            return False
        alerts, _ = self.enc_received()
        return set(self.stored()) <= alerts


def compare(
    stored: set[str], alerts: set[str], received: Counter[str]
) -> tuple[list[str], list[str], list[str]]:
    """(lost, duplicated, unexpected) incident ids: stored by a pole and not at the ENC;
    received (or passed on) more than once; at the ENC and stored by no pole."""
    return (
        sorted(stored - alerts),
        sorted(i for i, n in received.items() if n > 1),
        sorted(alerts - stored),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    print(f"chaos: seed {seed}", flush=True)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="citywatch-chaos-"))
    os.umask(0o077)
    d = District(workdir, args.poles, args.seconds, rng)
    t_start = time.monotonic()
    lost: list[str] = []
    duplicated: list[str] = []
    try:
        d.start()
        log(
            f"district up in {time.monotonic() - t_start:.0f} s: {args.poles} poles, 2 server "
            f"replicas on PostgreSQL, the ENC, Mosquitto ({workdir})"
        )
        # Kill moments, uniform over the run; power cuts among them (at least 3).
        begin = time.monotonic()
        moments = sorted(rng.uniform(0, args.seconds) for _ in range(args.kills))
        power_cuts = set(rng.sample(range(args.kills), min(args.kills, max(3, args.kills // 25))))
        kinds: Counter[str] = Counter()
        names = [n for n in d.targets() if not n.startswith("pole-")]
        for k, at in enumerate(moments):
            while time.monotonic() < begin + at:
                d.supervise()
                time.sleep(0.1)
            targets = d.targets()
            # Only what is up can be killed (a kill of a dead process would count for
            # nothing); with everything down at once, wait for something to come back.
            while True:
                pole_names = [n for n in targets if n.startswith("pole-") and targets[n].alive()]
                central = [n for n in names if targets[n].alive()]
                if pole_names or central:
                    break
                d.supervise()
                time.sleep(0.1)
            if k in power_cuts and pole_names:
                kind = "power-cut"
                name = rng.choice(pole_names)
            else:
                # Half of the kills hit a pole's daemon, the rest the central services.
                edge = rng.random() < 0.5
                if (edge and not pole_names) or (not edge and not central):
                    edge = not edge
                kind = "edge" if edge else rng.choice(central)
                name = rng.choice(pole_names) if edge else kind
            comp = targets[name]
            if kind == "power-cut":
                comp.power_cut()
                delay = rng.uniform(3.0, 8.0)
            else:
                comp.kill()
                delay = rng.uniform(0.2, 3.0)
            comp.down_until = time.monotonic() + delay
            kinds["server" if kind.startswith("server") else kind] += 1
            log(f"kill {k + 1}/{args.kills}: {name} ({kind}), back in {delay:.1f} s")
        while time.monotonic() < begin + args.seconds:
            d.supervise()
            time.sleep(0.1)
        chaos_s = time.monotonic() - begin
        log("chaos over: everything comes back, the cameras see an empty street")
        for comp in d.targets().values():
            if not comp.alive():
                comp.start()
            comp.down_until = 0.0
        d.calm()
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            d.supervise()
            with contextlib.suppress(sqlite3.Error):
                if d.settled():
                    break
            time.sleep(1.0)
        settle_s = time.monotonic() - begin - chaos_s
        stored = d.stored()
        alerts, received = d.enc_received()
        lost, duplicated, unexpected = compare(set(stored), alerts, received)
        for i in lost:
            uid, cid = stored[i]
            log(f"LOST: {uid} cid {cid.hex()} incident {i}")
        for i in duplicated:
            log(f"DUPLICATED: incident {i} received {received[i]} times")
        waiting = {pole.edge.uid: pole.waiting() for pole in d.poles if pole.waiting()}
        return {
            "kills": sum(kinds.values()),
            "incidents": len(stored),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "unexpected": len(unexpected),
            "kinds": dict(sorted(kinds.items())),
            "seed": seed,
            "poles": args.poles,
            "exited_by_themselves": dict(sorted(d.exits.items())),
            "still_in_outboxes": waiting,
            "chaos_s": round(chaos_s),
            "settle_s": round(settle_s),
            "total_s": round(time.monotonic() - t_start),
            "workdir": str(workdir) if args.keep or lost or duplicated else None,
        }
    except BaseException:
        args.keep = True
        log(f"failed; logs and databases are kept in {workdir}")
        raise
    finally:
        d.stop()
        if not args.keep and not lost and not duplicated:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poles", type=int, default=10)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=float, default=None)
    g.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--settle",
        type=float,
        default=180.0,
        help="seconds to wait for everything stored to reach the ENC",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the working folder (logs, databases) and print its path",
    )
    args = ap.parse_args()
    args.seconds = (
        args.minutes * 60
        if args.minutes is not None
        else args.seconds
        if args.seconds is not None
        else 240.0
    )
    if args.poles < 1 or args.kills < 0 or args.seconds <= 0:
        ap.error("--poles >= 1, --kills >= 0 and a positive duration, please")
    result = run(args)
    print(json.dumps(result), flush=True)
    return 1 if result["lost"] or result["duplicated"] or not result["incidents"] else 0


if __name__ == "__main__":
    sys.exit(main())
