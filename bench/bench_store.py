"""What the server's store costs per alert as its database grows: a batch of fusing
decisions, a claim of due alerts and a batch of deliveries, timed with 0 and with tens of
thousands of earlier incidents in the database (alerted and delivered an hour before,
outside every fusion window, as a month of a city's alerts leaves them; on PostgreSQL
vacuumed, as autovacuum keeps such a database).

Each round stores ``--batch`` new dangerous reports (each its own scene, 200 m apart),
decides them in one batch with fusion on (``decide_many``: the fusion read), claims
them for the ENC (``claim_due_alerts``, with a linked report waiting for its alert,
so the "has the alert it joins been delivered" test is asked) and records them delivered
(``alerts_delivered``). What a call costs should follow the time window and the batch,
not the history: the last column is the ratio of the largest history's time to the
empty database's.

Prints figures only; nothing here passes or fails on time. The last line is one JSON
object, ``{"database", "batch", "rows": [{"history", "decide_ms", "claim_ms",
"delivered_ms"}, ...]}`` (medians over ``--rounds``).

    .venv/bin/python bench/bench_store.py [--history 0,5000,20000] [--batch 16]
        [--rounds 20] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import protocol as p  # noqa: E402
from server import MasterKey, Store  # noqa: E402
from server._store import DecisionRecord  # noqa: E402
from tests.support.world import T0, incident_report, jpeg  # noqa: E402

HOUR_MS = 3_600_000
PHOTO = jpeg()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def report(kid: bytes, uid: str, n: int) -> p.IncidentReported:
    # every report ~200 m from the others: a scene of its own
    return incident_report(
        kid, uid, lat=52.2 + 0.0018 * (n % 500), lon=21.0 + 0.003 * (n // 500), photo=PHOTO
    )


def decision(inc: p.IncidentReported, *, fuse: bool) -> DecisionRecord:
    return DecisionRecord(
        inc.incident_id,
        0.9,
        False,
        True,
        "bench",
        fuse_within_m=50.0 if fuse else 0.0,
        fuse_within_ms=120_000,
    )


def add_history(store: Store, clock: Clock, kid: bytes, uid: str, n: int, start: int) -> None:
    """``n`` incidents alerted and delivered an hour before now, 500 a transaction."""
    now = clock.now
    clock.now = now - HOUR_MS
    for k in range(0, n, 500):
        batch = [report(kid, uid, start + k + i) for i in range(min(500, n - k))]
        store.store_incidents([(inc, "z") for inc in batch])
        store.decide_many([decision(inc, fuse=False) for inc in batch])
        store.alerts_delivered([(inc.incident_id, clock.now) for inc in batch])
    clock.now = now


def timed(f: Callable[[], object]) -> float:
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1000


@contextmanager
def database(postgres: bool, work: Path) -> Iterator[str]:
    if not postgres:
        yield f"sqlite:///{work / 'server.db'}"
        return
    from tests.support.services import postgres_server

    with postgres_server() as pg:
        yield str(pg.create_database("bench_store"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", default="0,5000,20000", help="earlier incidents, comma list")
    ap.add_argument("--batch", type=int, default=16, help="reports a round decides together")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--postgres", action="store_true", help="a PostgreSQL, not SQLite")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.history.split(","))
    work = Path(tempfile.mkdtemp(prefix="citywatch-bench-store-"))
    clock = Clock()
    rows: list[dict[str, object]] = []
    with database(args.postgres, work) as url:
        store = Store.open(url, MasterKey(os.urandom(32)), clock=clock)
        dialect = store.engine.dialect.name
        print(
            f"CityWatch store benchmark: {dialect}, batches of {args.batch}, "
            f"{args.rounds} rounds, medians"
        )
        print(f"{'history':>8} {'decide':>9} {'claim':>9} {'delivered':>10}   (ms per batch)")
        pole, _ = store.add_device(uid="pole-1", zone="z", lat=1, lon=1, alg=3, actor="bench")
        # A report linked to an alert the ENC does not have yet: every claim asks
        # whether that alert has been delivered.
        first, linked = report(pole.kid, pole.uid, 10**6), report(pole.kid, pole.uid, 10**6)
        store.store_incidents([(first, "z"), (linked, "z")])
        store.decide_many([decision(first, fuse=True), decision(linked, fuse=True)])
        store.claim_due_alerts(owner="stuck", lease_ms=10 * 24 * HOUR_MS, limit=1)
        have, n = 0, 0
        for size in sizes:
            add_history(store, clock, pole.kid, pole.uid, size - have, have)
            have = size
            if dialect == "postgresql":
                # What autovacuum does to a database with a month behind it: the outbox's
                # index no longer lists the rows that were pending before delivery.
                with store.engine.connect() as c:
                    c.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                        "VACUUM ANALYZE"
                    )
            clock.now += 200_000  # the last size's rounds out of the fusion window
            decide, claim, delivered = [], [], []
            for _ in range(args.rounds):
                clock.now += 1_000
                batch = [report(pole.kid, pole.uid, n + i) for i in range(args.batch)]
                n += args.batch
                store.store_incidents([(inc, "z") for inc in batch])
                decide.append(
                    timed(lambda b=batch: store.decide_many([decision(i, fuse=True) for i in b]))
                )
                claimed: list[str] = []

                def claim_all(claimed: list[str] = claimed) -> None:
                    items = store.claim_due_alerts(owner="bench", lease_ms=60_000, limit=args.batch)
                    claimed.extend(i.incident_id for i in items)

                claim.append(timed(claim_all))
                delivered.append(
                    timed(lambda c=claimed: store.alerts_delivered([(i, clock.now) for i in c]))
                )
                if len(claimed) != args.batch:
                    raise SystemExit(f"claimed {len(claimed)} of {args.batch}: the store is wrong")
            med = {
                k: statistics.median(v)
                for k, v in (("decide", decide), ("claim", claim), ("delivered", delivered))
            }
            rows.append(
                {
                    "history": size,
                    "decide_ms": round(med["decide"], 2),
                    "claim_ms": round(med["claim"], 2),
                    "delivered_ms": round(med["delivered"], 2),
                }
            )
            print(
                f"{size:>8} {med['decide']:>7.2f}ms {med['claim']:>7.2f}ms "
                f"{med['delivered']:>8.2f}ms",
                flush=True,
            )
        store.close()
    if len(rows) > 1 and rows[0]["history"] == 0:
        last, base = rows[-1], rows[0]
        ratios = "  ".join(
            f"{k} x{float(last[f'{k}_ms']) / max(float(base[f'{k}_ms']), 1e-9):.2f}"  # type: ignore[arg-type]
            for k in ("decide", "claim", "delivered")
        )
        print(f"{last['history']} earlier incidents against none: {ratios}")
    print(json.dumps({"database": dialect, "batch": args.batch, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
