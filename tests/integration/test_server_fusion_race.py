"""Two server replicas on one PostgreSQL never both alert for one scene.

Two ``TrustedServer`` instances, each with its own database connections, decide two
reports of one scene at the same instant: the photo check of each ends at a barrier the
other one also waits at, so both decisions reach the database together. Fusion is
decided under a lock, so one of them alerts and the other is fused into it, scene after
scene. (Without the lock both transactions look for an alerted neighbour before either
has committed, find none, and both alert.)
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path

from server import Outcome, TrustedServer, Verdict, example_config, load_config, now_ms
from tests.support.services import Postgres, free_port
from tests.support.world import incident_report

SCENES = 12
NORTH_20M = 20 / 111_195
"""Degrees of latitude for 20 m: two poles looking at one scene."""


class MeetingVerifier:
    """A photo check that finds every photo dangerous and returns only when the other
    replica's check returns too (both decisions then race to the database)."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier

    def score(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict:
        self.barrier.wait()
        return Verdict(0.95, "person_down", False, "meets the other replica")


def _replica(config: Path, barrier: threading.Barrier) -> TrustedServer:
    return TrustedServer(load_config(config), verifier=MeetingVerifier(barrier))


def test_two_replicas_racing_on_one_scene_alert_once(tmp_path: Path, postgres: Postgres) -> None:
    db = postgres.create_database(f"server_{uuid.uuid4().hex[:12]}")
    config = tmp_path / "server.toml"
    config.write_text(
        example_config(data_dir=str(tmp_path / "data"))
        .replace('url = ""', f"url = {json.dumps(str(db))}")
        .replace("port = 8600", f"port = {free_port()}")
    )
    barrier = threading.Barrier(2, timeout=30)
    a, b = _replica(config, barrier), _replica(config, barrier)
    try:
        assert a.store.engine is not b.store.engine
        assert a.config.verification.fuse_within_m >= 20  # the default fuses these
        poles = [
            a.store.add_device(uid=f"pole-{i}", zone="z", lat=52.2, lon=21.0, alg=3, actor="t")[0]
            for i in range(2)
        ]

        async def race() -> list[tuple[str, str, list[Outcome | None]]]:
            results = []
            for scene in range(SCENES):
                # Scenes 1 km apart: each one its own alert.
                lat = 52.2 + scene * 0.009
                one = incident_report(poles[0].kid, poles[0].uid, lat=lat, at=now_ms())
                two = incident_report(poles[1].kid, poles[1].uid, lat=lat + NORTH_20M, at=now_ms())
                # Each replica got one of the two reports.
                await asyncio.to_thread(a.store.store_incident, one, zone="z")
                await asyncio.to_thread(b.store.store_incident, two, zone="z")
                outcomes = await asyncio.gather(
                    a.verification.verify(one.incident_id), b.verification.verify(two.incident_id)
                )
                results.append((one.incident_id, two.incident_id, list(outcomes)))
            return results

        results = asyncio.run(race())
        doubled = [r for r in results if r[2] == [Outcome.DANGEROUS, Outcome.DANGEROUS]]
        assert doubled == [], f"{len(doubled)} of {SCENES} scenes alerted twice"
        for one, two, outcomes in results:
            assert set(outcomes) == {Outcome.DANGEROUS, Outcome.FUSED}
            first, second = a.store.get_incident(one), a.store.get_incident(two)
            alerted, fused = (
                (first, second) if outcomes[0] is Outcome.DANGEROUS else (second, first)
            )
            # The fused report waits in the queue as a linked report of the one alert.
            assert fused.fused_into == alerted.id and fused.enc_state == "pending"
            assert alerted.fused_into is None and alerted.enc_state == "pending"
        assert a.store.outbox_depth() == 2 * SCENES  # one alert and one linked report each
        linked = {
            i.incident_id: i.linked_to
            for i in a.store.claim_due_alerts(owner="t", lease_ms=60_000, limit=100)
        }
        assert len(linked) == SCENES and set(linked.values()) == {None}  # alerts first
    finally:
        for server in (a, b):
            server.verifier.close()
            server.store.close()
