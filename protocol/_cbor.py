"""Strict CBOR decoding: one data item, nothing after it."""

from __future__ import annotations

import io
from typing import Any

import cbor2

__all__ = ["loads_exact"]


def loads_exact(data: bytes) -> Any:
    """Decode exactly one CBOR data item; trailing bytes are an error (``ValueError``)."""
    fp = io.BytesIO(data)
    value = cbor2.CBORDecoder(fp).decode()
    if fp.tell() != len(data):
        raise ValueError(f"{len(data) - fp.tell()} bytes after the CBOR data item")
    return value
