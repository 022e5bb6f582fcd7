"""The trusted server as a real process with a real Mosquitto: broadcast, contact, ENC
notification, presence, and the admin API and CLI talking to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
from citywatch._footage import fall_photo
from citywatch._simdevice import SimulatedDevice
from tests.integration.server_harness import (
    EncStub,
    ServerProcess,
    ServerSetup,
    make_server,
    wait_until,
)
from tests.support.services import Broker, free_port
from tests.support.world import jpeg

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")


@pytest.fixture
def enc_port() -> int:
    return free_port()


@pytest.fixture
def setup(tmp_path: Path, broker: Broker, enc_port: int) -> ServerSetup:
    return make_server(tmp_path, broker, enc_url=f"http://127.0.0.1:{enc_port}")


@pytest.fixture
def enc(setup: ServerSetup, enc_port: int) -> Iterator[EncStub]:
    stub = EncStub(server_kid=setup.server_kid, key=setup.enc_key, port=enc_port).start()
    yield stub
    stub.stop()


@pytest.fixture
def server(setup: ServerSetup) -> Iterator[ServerProcess]:
    proc = ServerProcess(setup)
    yield proc
    proc.stop()


def test_broadcast_contact_and_enc_notification(
    setup: ServerSetup, server: ServerProcess, enc: EncStub
) -> None:
    b1 = setup.add_device("pole-1", "old-town")
    b2 = setup.add_device("pole-2", "old-town")
    other = setup.add_device("pole-9", "harbour")
    server.start()

    async def scenario() -> None:
        async with (
            SimulatedDevice(b1) as d1,
            SimulatedDevice(b2) as d2,
            SimulatedDevice(other) as d9,
        ):
            # The CLI reaches the running server through its admin API: B1 goes out at once.
            code, out = await asyncio.to_thread(
                setup.cli, "window", "open", "--zone", "old-town", "--until", "2099-01-01T00:00Z"
            )
            assert code == 0 and "sent B1" in out, out
            w1 = await d1.wait_for_window(timeout=10)
            w2 = await d2.wait_for_window(timeout=10)
            assert w1.tx == w2.tx == 4070908800000 and w1.ep >= 1
            assert not d9.window.is_set()

            delivered = await d1.report(fall_photo(), HERE, 0.93, "person_down", timeout=20)
            await asyncio.to_thread(
                wait_until,
                lambda: delivered.incident_id in enc.alerts,
                timeout=15,
                what="alert at the ENC",
            )
            alert = enc.alerts[delivered.incident_id]
            assert alert.device_uid == "pole-1" and alert.label == "person_down"
            assert alert.coords == HERE and alert.photo == fall_photo()

            # Outside a window: error 4, and the report waits for the next B1.
            with pytest.raises(TimeoutError):
                await d9.report(fall_photo(), HERE, 0.93, "fall", timeout=1.5)
            assert [r.code for r in d9.refusals()][:1] == [p.ErrorCode.FRAMEWORK_INACTIVE]

    asyncio.run(scenario())

    # B2 confirmations are recorded; incidents and ENC state are visible in the registry.
    devices = {d["uid"]: d for d in server.api("GET", "/v1/devices").json()}
    assert devices["pole-1"]["confirmed_epoch"] == devices["pole-1"]["epoch"] >= 1
    assert devices["pole-9"]["confirmed_epoch"] is None
    wait_until(
        lambda: server.api("GET", "/v1/incidents").json()[0]["enc_state"] == "delivered",
        timeout=10,
        what="delivered state",
    )
    [inc] = server.api("GET", "/v1/incidents").json()
    assert inc["decision"] == "dangerous" and inc["device_uid"] == "pole-1"
    assert server.api("GET", f"/v1/incidents/{inc['id']}/photo").content == fall_photo()
    code, out = setup.cli("incidents", "--json")
    assert code == 0 and inc["id"] in out
    assert server.metric("citywatch_server_messages_total", type="C3", outcome="accepted") == 1
    assert server.metric("citywatch_server_incidents_total", decision="dangerous") == 1
    assert (
        server.metric("citywatch_server_rejected_messages_total", reason="framework_inactive") >= 1
    )
    assert server.metric("citywatch_server_broadcast_confirmations_total") >= 2
    assert server.metric("citywatch_server_outbox_depth") == 0
    assert enc.stored == {inc["id"]: 1}


def test_reconnecting_device_gets_a_fresh_b1_and_close_ends_the_window(
    setup: ServerSetup, server: ServerProcess
) -> None:
    bundle = setup.add_device("pole-1", "old-town")
    server.start()
    assert (
        server.api(
            "POST", "/v1/windows/old-town/open", json={"until": "2099-01-01T00:00:00Z"}
        ).status_code
        == 201
    )

    async def scenario() -> None:
        first = SimulatedDevice(bundle)
        await first.start()
        w = await first.wait_for_window(timeout=10)
        await first.crash()  # no goodbye: the broker publishes the last will "offline"

        async with SimulatedDevice(bundle, last_epoch=w.ep) as again:
            fresh = await again.wait_for_window(timeout=10)
            assert fresh.ep > w.ep and fresh.tx == w.tx
            code, out = await asyncio.to_thread(setup.cli, "window", "close", "--zone", "old-town")
            assert code == 0 and "1 operator window(s) closed" in out
            closing = await again.wait_for(
                lambda e: isinstance(e, p.WindowAnnounced) and e.tx == e.ts, timeout=10
            )
            assert isinstance(closing, p.WindowAnnounced) and closing.ep > fresh.ep
            assert not again.window.is_set()

    asyncio.run(scenario())
    audit = server.api("GET", "/v1/audit", params={"subject": "old-town"}).json()
    assert [(a["actor"], a["action"]) for a in reversed(audit)] == [
        ("api", "window.open"),
        ("api:it-test", "window.close"),
    ]


def test_a_scheduled_window_opens_by_itself(tmp_path: Path, broker: Broker) -> None:
    setup = make_server(
        tmp_path,
        broker,
        enc_url="http://127.0.0.1:9",
        extra='[[schedules]]\nzone = "station"\nkind = "always"\n',
    )
    bundle = setup.add_device("pole-1", "station")
    server = ServerProcess(setup).start()
    try:

        async def scenario() -> None:
            async with SimulatedDevice(bundle) as d:
                w = await d.wait_for_window(timeout=10)
                assert w.tx - w.ts > 24 * 3_600_000

        asyncio.run(scenario())
        code, out = setup.cli("window", "close", "--zone", "station")
        assert code == 0 and "stays monitored by a schedule" in out
    finally:
        server.stop()


def test_device_state_changes_reach_the_running_server(
    setup: ServerSetup, server: ServerProcess
) -> None:
    bundle = setup.add_device("pole-1", "old-town")
    server.start()
    server.api("POST", "/v1/windows/old-town/open", json={"until": "2099-01-01T00:00:00Z"})

    async def scenario() -> None:
        async with SimulatedDevice(bundle) as d:
            await d.wait_for_window(timeout=10)
            # Through the CLI, straight to the database: the server's poll picks it up.
            code, _ = await asyncio.to_thread(setup.cli, "device", "deactivate", "pole-1")
            assert code == 0
            await asyncio.sleep(1.0)  # poll_s is 0.3 in these tests
            with pytest.raises(TimeoutError):
                await d.report(fall_photo(), HERE, 0.9, "fall", timeout=1.0)
            assert d.refusals()[0].code == p.ErrorCode.DEVICE_INACTIVE

    asyncio.run(scenario())


def test_a_deleted_device_is_forgotten_by_the_running_server(
    setup: ServerSetup, server: ServerProcess
) -> None:
    # The running server re-reads only what changed; a deleted device is not a change
    # it can read, so it must notice the kid missing.
    bundle = setup.add_device("pole-1", "old-town")
    setup.add_device("pole-2", "old-town")
    server.start()
    server.api("POST", "/v1/windows/old-town/open", json={"until": "2099-01-01T00:00:00Z"})

    async def scenario() -> None:
        async with SimulatedDevice(bundle) as d:
            await d.wait_for_window(timeout=30)
            await asyncio.sleep(1.0)  # a poll or two after the full first read
            code, _ = await asyncio.to_thread(setup.cli, "device", "delete", "pole-1")
            assert code == 0
            await asyncio.sleep(1.0)  # poll_s is 0.3 in these tests
            with pytest.raises(TimeoutError):
                await d.report(fall_photo(), HERE, 0.9, "fall", timeout=2.0)
            assert d.refusals() == []  # an unknown kid gets no answer at all

    asyncio.run(scenario())
    assert server.api("GET", "/v1/incidents").json() == []


def _one_pole_reports(tmp_path: Path, broker: Broker, photo: bytes, count: int) -> ServerProcess:
    """A server (ENC unreachable, blocking after 2 dismissals, no fusion) with one pole in
    a monitored zone that reports ``photo`` ``count`` times with its own score 0.05;
    returns the running server once every report has its decision."""
    setup = make_server(
        tmp_path,
        broker,
        enc_url="http://127.0.0.1:9",
        verification={"block_after_dismissed": 2, "fuse_within_m": 0},
    )
    bundle = setup.add_device("pole-1", "z")
    server = ServerProcess(setup).start()
    server.api("POST", "/v1/windows/z/open", json={"until": "2099-01-01T00:00:00Z"})

    async def scenario() -> None:
        async with SimulatedDevice(bundle) as d:
            await d.wait_for_window(timeout=10)
            for _ in range(count):
                await d.report(photo, HERE, 0.05, "fall", timeout=10)

    try:
        asyncio.run(scenario())
        wait_until(
            lambda: (
                len([i for i in server.api("GET", "/v1/incidents").json() if i["decision"]])
                == count
            ),
            timeout=20,
            what="decisions",
        )
    except BaseException:
        server.stop()
        raise
    return server


def test_photos_of_nobody_are_dismissed_and_the_sender_blocked(
    tmp_path: Path, broker: Broker
) -> None:
    server = _one_pole_reports(tmp_path, broker, jpeg((320, 240)), 2)
    try:
        wait_until(
            lambda: server.api("GET", "/v1/devices/pole-1").json()["blocked"],
            timeout=10,
            what="device blocked",
        )
        incidents = server.api("GET", "/v1/incidents").json()
        assert {i["decision"] for i in incidents} == {"dismissed"}
        assert all(i["enc_state"] is None for i in incidents)
        [block] = [
            a for a in server.api("GET", "/v1/audit").json() if a["action"] == "device.block"
        ]
        assert block["actor"] == "server:verification" and "2 reports" in block["detail"]["reason"]
        assert server.metric("citywatch_server_incidents_total", decision="dismissed") == 2
    finally:
        server.stop()


def test_a_device_reporting_real_people_is_not_blocked_even_with_low_own_scores(
    tmp_path: Path, broker: Broker
) -> None:
    # The blocking rule runs on the server's own scores: a pole whose pre-screen is unsure
    # (0.05) but whose photos show a person lying is right, and stays unblocked.
    server = _one_pole_reports(tmp_path, broker, fall_photo(), 3)
    try:
        incidents = server.api("GET", "/v1/incidents").json()
        assert len(incidents) == 3
        assert {i["decision"] for i in incidents} == {"dangerous"}
        assert not server.api("GET", "/v1/devices/pole-1").json()["blocked"]
    finally:
        server.stop()


def test_sigterm_stops_the_server_cleanly(setup: ServerSetup, server: ServerProcess) -> None:
    server.start()
    t0 = time.monotonic()
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    assert time.monotonic() - t0 < 10


def test_poles_that_see_the_same_scene_send_one_alert(
    setup: ServerSetup, server: ServerProcess, enc: EncStub
) -> None:
    """Two poles 30 m apart report the same fall: one alert, the second report is stored
    and linked to it. This ENC knows only N1 (it answers 404 to an N3), so the linked
    report reaches it as an N1 of its own rather than not at all (the real ENC shows it
    with its alert: test_server_linked_reports.py). A pole 500 m away alerts on its own."""
    near_a, near_b = setup.add_device("pole-a", "z"), setup.add_device("pole-b", "z")
    far = setup.add_device("pole-far", "z")
    server.start()
    server.api("POST", "/v1/windows/z/open", json={"until": "2099-01-01T00:00:00Z"})
    north = 30 / 111_195
    b_here = p.Coords(lat=HERE.lat + north, lon=HERE.lon, alt=None, acc=3.0, src="gps")
    far_here = p.Coords(lat=HERE.lat + 500 / 111_195, lon=HERE.lon, alt=None, acc=3.0, src="gps")

    async def scenario() -> tuple[str, str, str]:
        async with (
            SimulatedDevice(near_a) as a,
            SimulatedDevice(near_b) as b,
            SimulatedDevice(far) as f,
        ):
            for d in (a, b, f):
                await d.wait_for_window(timeout=10)
            first = await a.report(fall_photo(), HERE, 0.93, "person_down", timeout=20)
            await asyncio.to_thread(
                wait_until,
                lambda: first.incident_id in enc.alerts,
                timeout=15,
                what="the first alert at the ENC",
            )
            second = await b.report(fall_photo(), b_here, 0.9, "person_down", timeout=20)
            other = await f.report(fall_photo(), far_here, 0.9, "person_down", timeout=20)
            return first.incident_id, second.incident_id, other.incident_id

    first, second, other = asyncio.run(scenario())
    wait_until(lambda: other in enc.alerts, timeout=15, what="the far pole's alert")
    wait_until(
        lambda: server.api("GET", f"/v1/incidents/{second}").json()["decision"],
        timeout=15,
        what="the second report decided",
    )
    record = server.api("GET", f"/v1/incidents/{second}").json()
    assert record["fused_into"] == first and record["decision"] == "dangerous"
    wait_until(
        lambda: server.metric("citywatch_server_outbox_depth") == 0,
        timeout=15,
        what="an empty outbox",
    )
    assert server.api("GET", f"/v1/incidents/{second}").json()["enc_state"] == "delivered"
    assert set(enc.alerts) == {first, second, other}
    assert server.metric("citywatch_server_incidents_total", decision="fused") == 1
    assert server.metric("citywatch_server_incidents_total", decision="dangerous") == 2
