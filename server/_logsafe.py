"""Log records whose fields a peer may have chosen (labels, UIDs, error texts) are
escaped before they are formatted: a newline or an escape sequence in a field can
neither forge a log line nor drive a terminal."""

from __future__ import annotations

import logging

__all__ = ["EscapeControlCharacters", "escape"]


def escape(text: str) -> str:
    """``text`` with every non-printable character as a backslash escape."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class EscapeControlCharacters(logging.Filter):
    """A filter for a logger: escapes its records' message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = escape(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                escape(a)
                if isinstance(a, str)
                else escape(str(a))
                if isinstance(a, BaseException)
                else a
                for a in record.args
            )
        return True
