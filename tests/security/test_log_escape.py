"""The server's log escapes what a peer may have chosen: a newline in a field (an
exception's text, a topic) cannot start a forged line, an escape sequence cannot
drive the terminal that shows the log."""

from __future__ import annotations

import io
import logging

from server._logsafe import EscapeControlCharacters


def test_log_fields_are_escaped() -> None:
    out = io.StringIO()
    logger = logging.getLogger("citywatch.test.logsafe")
    logger.propagate = False
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.addFilter(EscapeControlCharacters())
    try:
        forged = "x\nERROR citywatch.server: device pole-1 blocked"
        logger.warning(
            "message on %s could not be handled: %s",
            f"citywatch/v1/{forged}/up",
            ValueError("bad\r\x1b[2Kvalue"),
        )
        logger.warning("plain %s and %d", "ünïcode ok", 7)
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "\\n" in lines[0] and "\\r" in lines[0] and "\\x1b" in lines[0]
    assert "\x1b" not in out.getvalue()
    assert lines[1] == "WARNING plain ünïcode ok and 7"
