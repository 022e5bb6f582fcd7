"""A child process spoken to in JSON lines over its stdin and stdout: how the benchmarks
drive their pole processes (one request per line, one answer per line, stderr to a log)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any


class LineProcess:
    """``cmd`` started with its stderr in ``log``; ``send`` writes one JSON object, ``read``
    waits up to ``timeout`` seconds for one. An answer with an ``"error"`` key is raised as
    a RuntimeError naming ``who``."""

    def __init__(self, cmd: list[str], log: Path, *, cwd: Path, who: str = "the child") -> None:
        self.who = who
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=cwd
        )
        self._buf = b""

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.who} did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"{self.who} exited ({self.proc.poll()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.who}: {answer['error']}")
        return answer

    def ask(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(obj)
        return self.read(timeout)

    def stop(self, wait_s: float = 15) -> None:
        """Asks the child to stop (``{"cmd": "stop"}``), then kills it after ``wait_s``."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"cmd": "stop"})
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
