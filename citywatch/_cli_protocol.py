"""``citywatch protocol``: tools for integrators writing a second implementation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import protocol as p
from protocol._crypto import open_envelope

__all__ = ["inspect_message", "make_vectors", "register"]


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    ins = sub.add_parser("inspect", help="print a message's header and, with a key, plaintext")
    ins.add_argument("file", help="a file holding one message (raw bytes or hex), or - for stdin")
    ins.add_argument("--key-hex", help="the AES key (32 or 64 hex digits) to decrypt with")
    ins.set_defaults(func=_inspect_cmd)
    vec = sub.add_parser(
        "vectors", help="write JSON test vectors for the nine message types and N3, N4"
    )
    vec.add_argument("--out", required=True, help="where to write the JSON (- for stdout)")
    vec.set_defaults(func=_vectors_cmd)


class CheckFailed(Exception):
    """A message failed a named check."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def inspect_message(data: bytes, key: bytes | None = None) -> dict[str, Any]:
    """Header (and plaintext with a key) of one message; ``CheckFailed`` names the check."""
    try:
        env = p.decode_envelope(data, max_size=p.Limits().max_large_message)
    except p.MessageTooLarge as exc:
        raise CheckFailed("size", str(exc)) from None
    except p.MalformedMessage as exc:
        raise CheckFailed("envelope", str(exc)) from None
    known = env.type in p.MessageType._value2member_map_
    out: dict[str, Any] = {
        "type": env.type,
        "name": p.MessageType(env.type).name if known else "UNKNOWN",
        "kid": env.kid.hex(),
        "alg": p.ALG_NAMES[env.alg],
        "iv": env.iv.hex(),
        "size": len(data),
        "hash": p.message_hash(data).hex(),
    }
    if not known:
        raise CheckFailed("type", f"unknown message type {env.type}")
    large = env.type in (p.MessageType.C3, p.MessageType.N1)
    if not large and len(data) > p.Limits().max_small_message:
        raise CheckFailed(
            "size", f"{out['name']} of {len(data)} bytes exceeds {p.Limits().max_small_message}"
        )
    if key is None:
        return out
    try:
        cipher = p.AesGcmCipher(key)
    except p.LocalProtocolError as exc:
        raise CheckFailed("key", str(exc)) from None
    if cipher.alg != env.alg:
        raise CheckFailed(
            "alg", f"message says {p.ALG_NAMES[env.alg]}, the key is {p.ALG_NAMES[cipher.alg]}"
        )
    try:
        plaintext = open_envelope(env, cipher)
    except p.AuthenticationFailed as exc:
        raise CheckFailed("auth", f"{exc} (wrong key, or the message was altered)") from None
    try:
        message = p.decode_plaintext(env.type, plaintext)
    except p.InvalidPlaintext as exc:
        raise CheckFailed("plaintext", str(exc)) from None
    out["plaintext"] = _jsonable(message.to_map())
    return out


def _read_input(name: str) -> bytes:
    raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    text = raw.strip()
    # Accept hex as well as raw bytes: a COSE_Encrypt0 never starts with an ASCII hex digit.
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        try:
            return bytes.fromhex(text.decode())
        except ValueError:
            pass
    return raw


def _inspect_cmd(args: argparse.Namespace) -> int:
    from .cli import CliError

    try:
        data = _read_input(args.file)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    key = None
    if args.key_hex:
        try:
            key = bytes.fromhex(args.key_hex)
        except ValueError:
            raise CliError("--key-hex is not hexadecimal") from None
    try:
        result = inspect_message(data, key)
    except CheckFailed as exc:
        print(f"citywatch protocol inspect: check failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


# -- vectors ---------------------------------------------------------------------------

_T = 1_764_000_000_000


def _counter_bytes(seed: int) -> Any:
    """Deterministic "randomness" so vectors are reproducible."""
    import hashlib

    state = {"n": 0}

    def random(n: int) -> bytes:
        state["n"] += 1
        return hashlib.sha256(f"citywatch-vectors/{seed}/{state['n']}".encode()).digest()[:n]

    return random


def _fixed(iv: bytes) -> Any:
    return lambda n: iv[:n]


def make_vectors() -> list[dict[str, Any]]:
    """One vector per message type (the nine, N3 and N4), with realistic contents and a
    real JPEG."""
    from ._sample import sample_jpeg  # Pillow: not needed to inspect a message

    photo = sample_jpeg()
    device_key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")  # an ATECC608: AES-128
    device_kid = bytes.fromhex("a1b2c3d4e5f60718")
    enc_key = bytes(range(0x20, 0x40))
    server_kid = bytes.fromhex("5e4f3a2b1c0d9e8f")
    coords = p.Coords(lat=52.229676, lon=21.012229, alt=112.5, acc=3.2, src="gps")
    h = bytes.fromhex("5f" * 32)
    cid = bytes.fromhex("00112233445566778899aabbccddeeff")
    tk = bytes.fromhex("01" + "c7" * 12 + "9a" * 40)
    inc = "1b6f1c4e-2a4d-4c1e-9f0a-6d2e5b7c8a90"
    device_msgs: list[p.Message] = [
        p.B1Announce(ts=_T, tx=_T + 8 * 3_600_000, h=p.epoch_hash(_T), ep=42),
        p.B2Confirm(ts=_T, ep=42, h=h),
        p.C1Hello(td=_T + 5_000, uid="WAW-MOK-0042"),
        p.C2Ready(td=_T + 5_000, tk=tk, h=h),
        p.C3Report(
            td=_T + 5_000,
            uid="WAW-MOK-0042",
            tk=tk,
            cid=cid,
            gc=coords,
            pf=photo,
            sc=0.91,
            lb="person_down",
            at=_T + 4_200,
        ),
        p.C4Receipt(td=_T + 5_000, inc=inc, h=h),
        p.ErrorMessage(re=3, td=_T + 5_000, code=5, now=_T + 65_000),
    ]
    enc_msgs: list[p.Message] = [
        p.N1Alert(
            ts=_T + 6_000,
            inc=inc,
            gc=coords,
            pf=photo,
            sc=0.87,
            lb="person_down",
            at=_T + 4_200,
            dev="WAW-MOK-0042",
        ),
        p.N2Receipt(tenc=_T + 6_150, inc=inc, h=h),
        # The extensions of docs/protocol.md, after the nine (their IVs come later in the
        # sequence, so the nine vectors stay as they were).
        p.N3LinkedReport(
            ts=_T + 71_000,
            inc=inc,
            rep="6c0e4b2a-8f1d-4d3b-a7e2-19c5f0b3d4e6",
            gc=coords,
            pf=photo,
            sc=0.93,
            lb="fight",
            at=_T + 69_500,
            dev="WAW-MOK-0043",
        ),
        p.N4PoleAddress(
            ts=_T + 7_000,
            dev="WAW-MOK-0042",
            adr="ul. Marszałkowska 104, 00-017 Warszawa",
            ver=_T - 86_400_000,
        ),
    ]
    random = _counter_bytes(1)
    out: list[dict[str, Any]] = []
    for msgs, key, kid in ((device_msgs, device_key, device_kid), (enc_msgs, enc_key, server_kid)):
        for m in msgs:
            iv: bytes = random(12)
            data = p.seal(m, cipher=p.AesGcmCipher(key), kid=kid, random=_fixed(iv))
            out.append(
                {
                    "type": int(m.TYPE),
                    "name": m.TYPE.name,
                    "key_hex": key.hex(),
                    "kid_hex": kid.hex(),
                    "iv_hex": iv.hex(),
                    "plaintext_cbor_hex": m.to_plaintext().hex(),
                    "message_hex": data.hex(),
                }
            )
    out.sort(key=lambda v: int(v["type"]))
    return out


def _vectors_cmd(args: argparse.Namespace) -> int:
    vectors = make_vectors()
    text = json.dumps(vectors, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {len(vectors)} vectors to {args.out}", file=sys.stderr)
    return 0
