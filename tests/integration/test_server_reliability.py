"""What must hold when things fail: the server killed between C3 and N1, the ENC down
for a while, and two server processes sharing the load through one database."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import protocol as p
from citywatch._footage import fall_photo
from citywatch._simdevice import SimulatedDevice
from tests.integration.server_harness import EncStub, ServerProcess, make_server, wait_until
from tests.support.services import Broker, Postgres, free_port

NO_FUSION = {"fuse_within_m": 0}
"""Reports that all come from one place: each an alert of its own (no fusion)."""
HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")
FOREVER = {"until": "2099-01-01T00:00:00Z"}


@pytest.mark.slow
def test_server_killed_between_c3_and_n1_loses_and_duplicates_nothing(
    tmp_path: Path, broker: Broker
) -> None:
    port = free_port()
    setup = make_server(
        tmp_path,
        broker,
        enc_url=f"http://127.0.0.1:{port}",
        enc={"request_timeout_s": 2.0, "connect_timeout_s": 1.0},
    )
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port, mode="hang")
    enc.start()
    bundle = setup.add_device("pole-1", "z")
    server = ServerProcess(setup).start()
    try:
        server.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def report() -> str:
            async with SimulatedDevice(bundle) as d:
                await d.wait_for_window(timeout=10)
                delivered = await d.report(fall_photo(), HERE, 0.9, "person_down", timeout=15)
                return delivered.incident_id

        incident_id = asyncio.run(report())  # C4 received: the device has forgotten it
        # The first N1 is in flight, held by the ENC: kill the server now.
        wait_until(enc.hanging.is_set, timeout=10, what="N1 at the ENC")
        server.kill()
        enc.mode = "ok"
        enc.release()
        assert enc.stored == {}

        restarted = ServerProcess(setup, "restarted").start()
        try:
            wait_until(
                lambda: incident_id in enc.stored,
                timeout=30,
                what="alert delivered after the restart",
            )
            wait_until(
                lambda: (
                    restarted.api("GET", f"/v1/incidents/{incident_id}").json()["enc_state"]
                    == "delivered"
                ),
                timeout=10,
                what="delivered",
            )
            assert enc.stored == {incident_id: 1} and enc.n2_sent == 1
            assert restarted.metric("citywatch_server_outbox_depth") == 0
        finally:
            restarted.stop()
    finally:
        server.kill()
        enc.stop()


def test_unverified_incident_is_verified_and_sent_after_a_restart(
    tmp_path: Path, broker: Broker
) -> None:
    """The kill lands after C4 but before the decision: the incident is stored and
    acknowledged but not verified. The next start verifies it and sends it."""
    port = free_port()
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{port}")
    bundle = setup.add_device("pole-1", "z")
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port)
    # Store an incident exactly as the ingest does, as if the process died right after.
    from server import load_config, open_store

    store, _ = open_store(load_config(setup.config), announce=False)
    inc = p.IncidentReported(
        kid=bundle.kid,
        uid=bundle.uid,
        td=1,
        cid=b"c" * 16,
        incident_id=p.incident_id_for(bundle.kid, b"c" * 16),
        coords=HERE,
        photo=fall_photo(),
        score=0.95,
        label="fall",
        captured_at=1,
        c3_hash=b"h" * 32,
    )
    store.store_incident(inc, zone="z")
    store.close()
    enc.start()
    server = ServerProcess(setup).start()
    try:
        wait_until(lambda: inc.incident_id in enc.stored, timeout=20, what="alert sent")
        got = server.api("GET", f"/v1/incidents/{inc.incident_id}").json()
        assert got["decision"] == "dangerous" and got["server_score"] > 0.6
    finally:
        server.stop()
        enc.stop()


@pytest.mark.slow
def test_enc_down_and_back(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    # Every report from the one pole, at one place, is an alert of its own here.
    setup = make_server(
        tmp_path, broker, enc_url=f"http://127.0.0.1:{port}", verification=NO_FUSION
    )
    bundle = setup.add_device("pole-1", "z")
    server = ServerProcess(setup).start()
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port)
    try:
        server.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def report(n: int) -> list[str]:
            async with SimulatedDevice(bundle) as d:
                await d.wait_for_window(timeout=10)
                return [
                    (await d.report(fall_photo(), HERE, 0.9, "fall", timeout=15)).incident_id
                    for _ in range(n)
                ]

        ids = asyncio.run(report(3))  # the ENC is not listening at all
        wait_until(
            lambda: all(
                (i["enc_attempts"] or 0) >= 3 for i in server.api("GET", "/v1/incidents").json()
            ),
            timeout=20,
            what="several failed attempts",
        )
        assert server.metric("citywatch_server_outbox_depth") == 3
        enc.mode = "refuse"  # up, but answering 503
        enc.start()
        wait_until(lambda: enc.requests >= 3, timeout=20, what="attempts against a 503")
        assert enc.stored == {}
        enc.mode = "ok"
        wait_until(lambda: set(enc.stored) == set(ids), timeout=30, what="all delivered")
        assert all(n == 1 for n in enc.stored.values())
        wait_until(
            lambda: server.metric("citywatch_server_outbox_depth") == 0,
            timeout=10,
            what="empty outbox",
        )
        assert server.metric("citywatch_server_enc_attempts_total", outcome="failed") >= 6
    finally:
        server.stop()
        enc.stop()


def test_an_enc_answering_megabytes_is_a_failed_delivery_retried(
    tmp_path: Path, broker: Broker
) -> None:
    """A broken or hostile ENC that answers 200 with 2 MiB of nothing: the server reads
    at most 1 MiB of an answer, counts the attempt failed and tries again; nothing is
    marked delivered until a real N2 comes, and then the alert is there once."""
    port = free_port()
    setup = make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{port}")
    bundle = setup.add_device("pole-1", "z")
    enc = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=port, mode="flood")
    enc.start()
    server = ServerProcess(setup).start()
    try:
        server.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def report() -> str:
            async with SimulatedDevice(bundle) as d:
                await d.wait_for_window(timeout=10)
                return (await d.report(fall_photo(), HERE, 0.9, "fall", timeout=15)).incident_id

        incident_id = asyncio.run(report())
        wait_until(lambda: enc.requests >= 2, timeout=20, what="attempts against the flood")
        state = server.api("GET", f"/v1/incidents/{incident_id}").json()
        assert state["enc_state"] == "pending" and (state["enc_attempts"] or 0) >= 1
        assert server.metric("citywatch_server_enc_attempts_total", outcome="failed") >= 1
        assert "an answer of" in server.log.read_text()
        enc.mode = "ok"
        wait_until(lambda: incident_id in enc.stored, timeout=30, what="delivered")
        wait_until(
            lambda: (
                server.api("GET", f"/v1/incidents/{incident_id}").json()["enc_state"] == "delivered"
            ),
            timeout=10,
            what="marked delivered",
        )
        assert enc.stored == {incident_id: 1}
    finally:
        server.stop()
        enc.stop()


@pytest.mark.slow
def test_two_server_processes_share_the_load(
    tmp_path: Path, broker: Broker, postgres: Postgres
) -> None:
    db = postgres.create_database(f"server_{uuid.uuid4().hex[:12]}")
    port = free_port()
    first = make_server(
        tmp_path, broker, enc_url=f"http://127.0.0.1:{port}", db_url=db, verification=NO_FUSION
    )
    second = first.variant("second")
    enc = EncStub(server_kid=first.server_kid, key=first.enc_key, port=port).start()
    bundles = [first.add_device(f"pole-{i}", "z") for i in range(6)]
    a = ServerProcess(first, "a").start()
    b = ServerProcess(second, "b").start()
    try:
        a.api("POST", "/v1/windows/z/open", json=FOREVER)

        async def run_devices() -> list[str]:
            devices = [SimulatedDevice(x) for x in bundles]
            for d in devices:
                await d.start()
            try:
                for d in devices:
                    await d.wait_for_window(timeout=15)

                async def two_reports(d: SimulatedDevice) -> list[str]:
                    return [
                        (await d.report(fall_photo(), HERE, 0.9, "fall", timeout=20)).incident_id
                        for _ in range(2)
                    ]

                got = await asyncio.gather(*(two_reports(d) for d in devices))
                return [i for ids in got for i in ids]
            finally:
                for d in devices:
                    await d.stop()

        ids = asyncio.run(run_devices())
        assert len(set(ids)) == 12
        wait_until(lambda: set(enc.stored) == set(ids), timeout=30, what="all alerts at the ENC")
        assert all(n == 1 for n in enc.stored.values())
        # Both processes handled part of the device traffic.
        handled = [s.metric("citywatch_server_messages_total", outcome="accepted") for s in (a, b)]
        assert all(h > 0 for h in handled), handled
        assert (
            sum(
                s.metric("citywatch_server_messages_total", type="C3", outcome="accepted")
                for s in (a, b)
            )
            >= 12
        )
        # One replica announced the window; every device got exactly one B1 for it, and
        # devices that came online got their fresh one from whichever replica heard it.
        devices = a.api("GET", "/v1/devices").json()
        assert all(d["confirmed_epoch"] is not None for d in devices)
    finally:
        a.stop()
        b.stop()
        enc.stop()
