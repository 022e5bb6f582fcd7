"""An incident acknowledged with C4 is decided however the database behaves meanwhile.

The device forgets an incident once it has its C4, so the server alone holds it from
then on. Here the database goes away exactly between the photo check and the writing
of the decision (a real PostgreSQL, stopped and started again): the decision waits for
it and the alert is queued once it is back. And an incident left undecided while the
server runs (another replica that stopped while deciding it) is found by the sweep,
without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
import server._verification as verification
from citywatch._footage import fall_photo
from citywatch._simdevice import SimulatedDevice
from server import Outcome, TrustedServer, Verdict, example_config, load_config, now_ms
from tests.integration.server_harness import EncStub, ServerProcess, make_server, wait_until
from tests.support.services import (
    Broker,
    Postgres,
    ServiceUnavailable,
    free_port,
    start_postgres,
)
from tests.support.world import incident_report

NO_FUSION = {"fuse_within_m": 0}
HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")
FOREVER = {"until": "2099-01-01T00:00:00Z"}


class HeldVerifier:
    """A photo check that finds every photo dangerous once the test lets it return."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def score(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30), "the test never released the photo check"
        return Verdict(0.95, "person_down", False, "held by the test")


def _server(tmp_path: Path, verifier: HeldVerifier, db_url: str = "") -> TrustedServer:
    config = tmp_path / "server.toml"
    text = example_config(data_dir=str(tmp_path / "data")).replace(
        "port = 8600", f"port = {free_port()}"
    )
    if db_url:
        text = text.replace('url = ""', f"url = {json.dumps(db_url)}")
    config.write_text(text)
    return TrustedServer(load_config(config), verifier=verifier)


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own: the test stops and starts it."""
    try:
        pg = start_postgres()
    except ServiceUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield pg
    pg.stop()
    shutil.rmtree(pg.datadir.parent, ignore_errors=True)


def test_decision_waits_for_the_database_and_is_written_once_it_is_back(
    tmp_path: Path, own_postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    db = own_postgres.create_database(f"server_{uuid.uuid4().hex[:12]}")
    held = HeldVerifier()
    server = _server(tmp_path, held, db)
    try:
        pole, _ = server.store.add_device(
            uid="pole-1", zone="z", lat=52.2, lon=21.0, alg=3, actor="t"
        )
        report = incident_report(pole.kid, pole.uid, at=now_ms())
        server.store.store_incident(report, zone="z")  # stored: C4 goes to the device

        async def outage() -> tuple[Outcome | None, Outcome | None]:
            task = asyncio.create_task(server.verification.verify(report.incident_id))
            await asyncio.to_thread(held.entered.wait, 30)
            await asyncio.to_thread(own_postgres.stop)  # between the check and the decision
            held.release.set()
            for _ in range(100):  # the decision fails and waits for the database
                if "the database is unavailable" in caplog.text:
                    break
                await asyncio.sleep(0.1)
            assert not task.done(), "the decision gave up while the database was down"
            # Reported again meanwhile (a repeated C3): not decided a second time.
            again = await server.verification.verify(report.incident_id)
            await asyncio.to_thread(own_postgres.start)
            return await asyncio.wait_for(task, 60), again

        with caplog.at_level(logging.WARNING, logger="citywatch.server"):
            outcome, again = asyncio.run(outage())
        assert "the database is unavailable" in caplog.text
        assert outcome is Outcome.DANGEROUS and again is None
        got = server.store.get_incident(report.incident_id)
        assert (got.decision, got.enc_state) == ("dangerous", "pending")
        assert server.store.outbox_depth() == 1 and held.calls == 1
    finally:
        held.release.set()
        server.verifier.close()
        server.store.close()


def test_an_incident_left_undecided_is_decided_by_the_sweep_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verification, "SWEEP_EVERY_S", 0.2)
    monkeypatch.setattr(verification, "SWEEP_AFTER_S", 0.5)
    held = HeldVerifier()
    held.release.set()
    server = _server(tmp_path, held)
    try:
        pole, _ = server.store.add_device(
            uid="pole-1", zone="z", lat=52.2, lon=21.0, alg=3, actor="t"
        )

        async def sweep() -> float:
            recovery = asyncio.create_task(server.verification.recover())
            await asyncio.sleep(0.3)  # the start's pass is over: nothing was left then
            # Stored by a replica that stopped before deciding it.
            report = incident_report(pole.kid, pole.uid, at=now_ms())
            await asyncio.to_thread(server.store.store_incident, report, zone="z")
            stored = asyncio.get_running_loop().time()
            try:
                for _ in range(100):
                    got = await asyncio.to_thread(server.store.get_incident, report.incident_id)
                    if got.decision is not None:
                        return asyncio.get_running_loop().time() - stored
                    await asyncio.sleep(0.1)
                raise AssertionError("the undecided incident was never decided")
            finally:
                recovery.cancel()

        waited = asyncio.run(sweep())
        # Not before it had been undecided for SWEEP_AFTER_S: a new incident is left to
        # the replica that stored it.
        assert waited >= 0.5
        assert server.store.undecided_incidents() == []
        assert server.store.outbox_depth() == 1 and held.calls == 1
    finally:
        server.verifier.close()
        server.store.close()


def test_a_report_while_the_database_is_down_is_acknowledged_once_it_is_back(
    tmp_path: Path, own_postgres: Postgres, broker: Broker
) -> None:
    """The server process keeps running through the outage: a C3 it cannot store gets
    no C4 (the device keeps it and sends it again), and once the database is back the
    incident is stored, decided and alerted exactly once."""
    db = own_postgres.create_database(f"server_{uuid.uuid4().hex[:12]}")
    port = free_port()
    setup = make_server(
        tmp_path, broker, enc_url=f"http://127.0.0.1:{port}", db_url=db, verification=NO_FUSION
    )
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port).start()
    bundle = setup.add_device("pole-1", "z")
    server = ServerProcess(setup).start()
    try:
        server.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def report() -> str:
            async with SimulatedDevice(bundle) as d:
                await d.wait_for_window(timeout=15)
                await asyncio.to_thread(own_postgres.stop)
                sending = asyncio.create_task(
                    d.report(fall_photo(), HERE, 0.9, "person_down", timeout=90)
                )
                await asyncio.sleep(8)  # a C3 or two meet the database down
                assert not sending.done(), "acknowledged while the database was down"
                await asyncio.to_thread(own_postgres.start)
                return (await sending).incident_id

        incident_id = asyncio.run(report())
        wait_until(lambda: incident_id in enc.stored, timeout=60, what="the alert at the ENC")
        assert enc.stored == {incident_id: 1}
        assert server.proc is not None and server.proc.poll() is None, "the server exited"
        log = server.log.read_text()
        assert "not stored, no C4: the device sends it again" in log, log[-3000:]
        assert "task failed" not in log, log[-3000:]
    finally:
        server.stop()
        enc.stop()


def test_a_pole_back_online_while_the_database_is_down_gets_its_b1_once_it_is_back(
    tmp_path: Path, own_postgres: Postgres, broker: Broker
) -> None:
    """A pole with no B1 does not watch: its ``online`` is kept while the database
    cannot be reached, not dropped, and answered once it is back."""
    db = own_postgres.create_database(f"server_{uuid.uuid4().hex[:12]}")
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{free_port()}", db_url=db)
    bundle = setup.add_device("pole-1", "z")
    server = ServerProcess(setup).start()
    try:
        server.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def back_online() -> tuple[bool, p.WindowAnnounced]:
            async with SimulatedDevice(bundle) as first:
                w = await first.wait_for_window(timeout=15)
            await asyncio.to_thread(own_postgres.stop)
            async with SimulatedDevice(bundle, last_epoch=w.ep) as again:
                await asyncio.sleep(4)  # its online meets the database down
                early = again.window.is_set()
                await asyncio.to_thread(own_postgres.start)
                fresh = await again.wait_for_window(timeout=60)
            assert fresh.ep > w.ep and fresh.tx == w.tx
            return early, fresh

        early, _ = asyncio.run(back_online())
        assert not early, "a B1 was sent while its epoch could not be stored"
        log = server.log.read_text()
        assert "back online wait for their B1: the database is unavailable" in log, log[-3000:]
        assert server.proc is not None and server.proc.poll() is None, "the server exited"
    finally:
        server.stop()
