"""Running a benchmark script end to end from a test: its output, never a judgement of its
figures (benchmarks do not pass or fail on time)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchRun:
    pid: int
    returncode: int
    out: str
    err: str

    def last_json(self) -> Any:
        """The JSON object on the last line of the output (every benchmark ends with one)."""
        return json.loads(self.out.strip().splitlines()[-1])

    def why(self) -> str:
        return self.out[-3000:] + self.err[-3000:]


def run_bench(script: str, *args: str, timeout: float) -> BenchRun:
    """``bench/<script>`` with ``args``, killed (and its output kept) after ``timeout`` s."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
    return BenchRun(proc.pid, proc.returncode, out, err)
