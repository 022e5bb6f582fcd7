"""Every error code over the wire, and what the server drops without answering:
replays, reflections, forgeries, unknown kids, messages on another device's topic."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

import protocol as p
from citywatch._footage import fall_photo
from citywatch._simdevice import ProvisioningBundle, SimulatedDevice
from protocol._crypto import seal_message
from tests.integration.server_harness import ServerProcess, ServerSetup, make_server, wait_until
from tests.support.services import Broker

HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=3.0, src="gps")


@pytest.fixture
def setup(tmp_path: Path, broker: Broker) -> ServerSetup:
    # A small token bucket so that error 9 is reachable in a test.
    return make_server(
        tmp_path,
        broker,
        enc_url="http://127.0.0.1:9",
        timing={"rate_limit_burst": 3, "rate_limit_per_minute": 0.5},
    )


@pytest.fixture
def server(setup: ServerSetup) -> Iterator[ServerProcess]:
    proc = ServerProcess(setup)
    yield proc
    proc.stop()


def now() -> int:
    return time.time_ns() // 1_000_000


class Wire:
    """A device's MQTT connection used to send hand-made messages and read the answers."""

    def __init__(self, dev: SimulatedDevice, bundle: ProvisioningBundle) -> None:
        self.dev, self.b = dev, bundle
        self.cipher = p.AesGcmCipher(bundle.key)

    def seal(self, m: p.Message) -> bytes:
        return p.seal(m, cipher=self.cipher, kid=self.b.kid, random=secrets.token_bytes)

    def open(self, data: bytes) -> p.Message:
        return p.open_message(
            data,
            role="device",
            accepts=(1, 4, 6, 9),
            limits=p.Limits(),
            key_for=lambda kid: self.cipher,
        ).message

    def answers(self, seen: int) -> list[p.Message]:
        """What came down since ``seen`` downlinks, less B1s: the server announces the
        window again whenever the device says it is online (its ``online`` may be
        answered after the test's first messages), and a B1 answers nothing."""
        opened = (self.open(d) for d in self.dev.downlinks[seen:])
        return [m for m in opened if not isinstance(m, p.B1Announce)]

    async def ask(self, data: bytes, *, topic: str | None = None) -> p.Message:
        seen = len(self.dev.downlinks)
        await self.dev.send_raw(data, topic=topic)
        deadline = time.monotonic() + 30  # a guard against hanging, not a speed limit
        while not (got := self.answers(seen)):
            assert time.monotonic() < deadline, "no answer from the server"
            await asyncio.sleep(0.01)
        return got[0]

    async def silent(self, data: bytes, *, topic: str | None = None, wait: float = 0.7) -> None:
        seen = len(self.dev.downlinks)
        await self.dev.send_raw(data, topic=topic)
        await asyncio.sleep(wait)
        assert not self.answers(seen), "the server answered what it must drop"

    async def refused(self, data: bytes, code: p.ErrorCode) -> p.ErrorMessage:
        answer = await self.ask(data)
        assert isinstance(answer, p.ErrorMessage), answer
        assert answer.code == code, (answer, code)
        return answer

    async def ticket(self, td: int) -> bytes:
        c2 = await self.ask(self.seal(p.C1Hello(td=td, uid=self.b.uid)))
        assert isinstance(c2, p.C2Ready), c2
        return c2.tk

    def c3(self, td: int, tk: bytes, *, photo: bytes | None = None) -> bytes:
        if photo is None or photo.startswith(b"\xff\xd8"):
            return self.seal(
                p.C3Report(
                    td=td,
                    uid=self.b.uid,
                    tk=tk,
                    cid=secrets.token_bytes(16),
                    gc=HERE,
                    pf=photo or fall_photo(),
                    sc=0.9,
                    lb="fall",
                    at=td,
                )
            )
        # Not a JPEG: the message class refuses to build it, so build the plaintext by hand.
        plaintext = cbor2.dumps(
            {
                "td": td,
                "uid": self.b.uid,
                "tk": tk,
                "cid": secrets.token_bytes(16),
                "gc": HERE.to_map(),
                "pf": photo,
                "sc": 0.9,
                "lb": "fall",
                "at": td,
            },
            canonical=True,
        )
        return seal_message(
            cipher=self.cipher,
            kid=self.b.kid,
            type=p.MessageType.C3,
            plaintext=plaintext,
            iv=secrets.token_bytes(12),
        )


def test_every_error_code_over_the_wire(setup: ServerSetup, server: ServerProcess) -> None:
    ba = setup.add_device("pole-a", "old-town")
    bb = setup.add_device("pole-b", "old-town")
    bc = setup.add_device("pole-c", "old-town")
    bz = setup.add_device("pole-z", "harbour")
    server.start()
    server.api("POST", "/v1/windows/old-town/open", json={"until": "2099-01-01T00:00:00Z"})
    assert server.api("POST", "/v1/devices/pole-b/deactivate").status_code == 200
    assert server.api("POST", "/v1/devices/pole-c/block").status_code == 200

    async def scenario() -> None:
        async with (
            SimulatedDevice(ba) as da,
            SimulatedDevice(bb) as db,
            SimulatedDevice(bc) as dc,
            SimulatedDevice(bz) as dz,
        ):
            await da.wait_for_window(timeout=30)
            a, b, c, z = Wire(da, ba), Wire(db, bb), Wire(dc, bc), Wire(dz, bz)
            t = now()
            await a.refused(a.seal(p.C1Hello(td=t, uid="pole-b")), p.ErrorCode.UID_MISMATCH)
            await b.refused(b.seal(p.C1Hello(td=t, uid="pole-b")), p.ErrorCode.DEVICE_INACTIVE)
            await c.refused(c.seal(p.C1Hello(td=t, uid="pole-c")), p.ErrorCode.DEVICE_BLOCKED)
            await z.refused(z.seal(p.C1Hello(td=t, uid="pole-z")), p.ErrorCode.FRAMEWORK_INACTIVE)
            stale = await a.refused(
                a.seal(p.C1Hello(td=t - 120_000, uid="pole-a")), p.ErrorCode.TIMESTAMP_OUT_OF_WINDOW
            )
            assert abs(stale.now - now()) < 5_000 and stale.td == t - 120_000
            c1 = a.seal(p.C1Hello(td=t + 1, uid="pole-a"))
            assert isinstance(await a.ask(c1), p.C2Ready)
            await a.refused(c1, p.ErrorCode.REPLAY)
            await a.refused(a.c3(t + 1, b"\x01" + b"x" * 40), p.ErrorCode.TICKET_INVALID)
            tk = await a.ticket(t + 2)
            rejected = await a.refused(
                a.c3(t + 2, tk, photo=b"GIF89a not a jpeg"), p.ErrorCode.PAYLOAD_REJECTED
            )
            assert rejected.re == p.MessageType.C3
            # Accepted C1s take from pole-a's bucket of 3: the fourth is rate limited.
            await a.ticket(t + 3)
            await a.refused(a.seal(p.C1Hello(td=t + 4, uid="pole-a")), p.ErrorCode.RATE_LIMITED)

    asyncio.run(scenario())
    for reason in (
        "uid_mismatch",
        "device_inactive",
        "device_blocked",
        "framework_inactive",
        "timestamp_out_of_window",
        "replay",
        "ticket_invalid",
        "payload_rejected",
        "rate_limited",
    ):
        assert server.metric("citywatch_server_rejected_messages_total", reason=reason) >= 1, reason
    assert server.api("GET", "/v1/incidents").json() == []


def test_replays_reflections_and_forgeries_are_dropped(
    setup: ServerSetup, server: ServerProcess
) -> None:
    ba = setup.add_device("pole-a", "old-town")
    bb = setup.add_device("pole-b", "old-town")
    server.start()
    server.api("POST", "/v1/windows/old-town/open", json={"until": "2099-01-01T00:00:00Z"})

    async def scenario() -> str:
        async with SimulatedDevice(ba) as da, SimulatedDevice(bb):
            await da.wait_for_window(timeout=30)
            a = Wire(da, ba)
            delivered = await da.report(fall_photo(), HERE, 0.9, "fall", timeout=30)

            def sent(kind: p.MessageType, messages: list[bytes]) -> bytes:
                return [m for m in messages if p.decode_envelope(m, max_size=10**7).type == kind][
                    -1
                ]

            c1, b2, c3 = (
                sent(t, da.uplinks) for t in (p.MessageType.C1, p.MessageType.B2, p.MessageType.C3)
            )
            c2 = sent(p.MessageType.C2, da.downlinks)

            # A replayed C3 gets error 6 and no second incident; a replayed C1 too.
            await a.refused(c3, p.ErrorCode.REPLAY)
            await a.refused(c1, p.ErrorCode.REPLAY)
            # Dropped, never answered: a replayed B2, the server's own C2 reflected back,
            # a forged (bit-flipped) message, an unknown kid, another device's topic.
            await a.silent(b2)
            await a.silent(c2)
            forged = bytearray(a.seal(p.C1Hello(td=now(), uid="pole-a")))
            forged[-3] ^= 0x01
            await a.silent(bytes(forged))
            stranger = bytes(8)
            await a.silent(
                p.seal(
                    p.C1Hello(td=now(), uid="pole-a"),
                    cipher=p.AesGcmCipher(bytes(32)),
                    kid=stranger,
                    random=secrets.token_bytes,
                ),
                topic=f"citywatch/v1/{stranger.hex()}/up",
            )
            await a.silent(
                a.seal(p.C1Hello(td=now(), uid="pole-a")), topic=f"citywatch/v1/{bb.kid.hex()}/up"
            )
            await a.silent(b"\x00garbage")
            return delivered.incident_id

    incident_id = asyncio.run(scenario())
    incidents = server.api("GET", "/v1/incidents").json()
    assert [i["id"] for i in incidents] == [incident_id]
    m = server.metric
    assert m("citywatch_server_rejected_messages_total", reason="mismatch") >= 1  # B2
    assert m("citywatch_server_rejected_messages_total", reason="unexpected") >= 1  # C2
    assert m("citywatch_server_rejected_messages_total", reason="auth") >= 1
    assert m("citywatch_server_rejected_messages_total", reason="unknown_kid") >= 1
    assert m("citywatch_server_rejected_messages_total", reason="topic_mismatch") >= 1
    assert m("citywatch_server_rejected_messages_total", reason="malformed") >= 1
    wait_until(
        lambda: server.api("GET", "/v1/incidents").json()[0]["decision"],
        timeout=60,
        what="decision",
    )
