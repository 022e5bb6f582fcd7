"""``citywatch server run`` with a stand-in photo check, for ``bench_server.py
--verifier light``: the same server (ingest, group commit, decision, fusion, ENC
outbox), only the photo check replaced by one that costs next to nothing. It shows what
the contact path and the rest of the server sustain on their own, apart from the cost of
the pose models.

    .venv/bin/python bench/light_server.py --config server.toml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hardware._service import configure_logging  # noqa: E402
from server import load_config  # noqa: E402
from server._app import TrustedServer  # noqa: E402
from server._verify import Verdict  # noqa: E402


class StandInVerifier:
    """Follows the device's score when the photo starts like a JPEG: no decoding, no
    models (``PhotoVerifier``)."""

    def score(
        self, photo: bytes, *, device_score: float | None = None, device_label: str = ""
    ) -> Verdict:
        if photo[:3] != b"\xff\xd8\xff":
            return Verdict(0.0, "not_jpeg", False, "stand-in: not a JPEG")
        score = min(1.0, max(0.0, device_score or 0.0))
        return Verdict(score, device_label or "person_down", False, "stand-in: device's score")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    args = ap.parse_args()
    cfg = load_config(args.config)
    configure_logging("INFO", identifier="citywatch-server")
    for noisy in ("httpx", "httpcore", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await TrustedServer(cfg, verifier=StandInVerifier()).run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
