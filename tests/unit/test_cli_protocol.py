"""``citywatch protocol inspect`` and ``vectors``, run as the integrator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pycose.keys import SymmetricKey
from pycose.messages import CoseMessage

import protocol as p
from citywatch._cli_protocol import make_vectors

ROOT = Path(__file__).resolve().parents[2]


def citywatch(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "citywatch", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("v") / "vectors.json"
    r = citywatch("protocol", "vectors", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


def test_vectors_cover_all_types_with_the_documented_fields(vectors: list[dict]) -> None:
    # The nine of protocol v1, then the extensions of docs/protocol.md (N3, N4).
    assert [v["type"] for v in vectors] == list(range(1, 12))
    assert [v["type"] for v in vectors] == sorted(p.MESSAGE_CLASSES)
    assert [v["name"] for v in vectors] == [
        "B1",
        "B2",
        "C1",
        "C2",
        "C3",
        "C4",
        "N1",
        "N2",
        "ERROR",
        "N3",
        "N4",
    ]
    for v in vectors:
        assert set(v) == {
            "type",
            "name",
            "key_hex",
            "kid_hex",
            "iv_hex",
            "plaintext_cbor_hex",
            "message_hex",
        }


@pytest.mark.parametrize("i", range(11))
def test_each_vector_opens_with_pycose_and_reseals_identically(vectors: list[dict], i: int) -> None:
    v = vectors[i]
    key, iv = bytes.fromhex(v["key_hex"]), bytes.fromhex(v["iv_hex"])
    msg = CoseMessage.decode(bytes.fromhex(v["message_hex"]))
    msg.key = SymmetricKey(k=key)
    msg.external_aad = p.EXTERNAL_AAD
    assert msg.decrypt().hex() == v["plaintext_cbor_hex"]
    message = p.decode_plaintext(v["type"], bytes.fromhex(v["plaintext_cbor_hex"]))
    again = p.seal(
        message, cipher=p.AesGcmCipher(key), kid=bytes.fromhex(v["kid_hex"]), random=lambda n: iv
    )
    assert again.hex() == v["message_hex"]


def test_photo_in_vectors_is_a_real_jpeg(vectors: list[dict]) -> None:
    from io import BytesIO

    from PIL import Image

    c3 = p.decode_plaintext(5, bytes.fromhex(vectors[4]["plaintext_cbor_hex"]))
    assert isinstance(c3, p.C3Report)
    img = Image.open(BytesIO(c3.pf))
    assert img.format == "JPEG" and img.size[0] >= 64


def test_the_extensions_vectors_are_what_the_enc_accepts(vectors: list[dict]) -> None:
    """N3 and N4 open at the ENC's own endpoints (at the time they were made)."""
    n3, n4 = vectors[9], vectors[10]
    enc = p.EncEndpoint(
        servers={bytes.fromhex(n3["kid_hex"]): p.AesGcmCipher(bytes.fromhex(n3["key_hex"]))},
        random=lambda n: bytes(n),
    )
    r3 = p.decode_plaintext(10, bytes.fromhex(n3["plaintext_cbor_hex"]))
    r4 = p.decode_plaintext(11, bytes.fromhex(n4["plaintext_cbor_hex"]))
    assert isinstance(r3, p.N3LinkedReport) and isinstance(r4, p.N4PoleAddress)
    [ev3] = enc.receive_report(bytes.fromhex(n3["message_hex"]), r3.ts)
    assert isinstance(ev3, p.LinkedReportReceived) and ev3.label == "fight"
    [ev4] = enc.receive_address(bytes.fromhex(n4["message_hex"]), r4.ts)
    assert isinstance(ev4, p.PoleAddressReceived)
    assert ev4.address == "ul. Marszałkowska 104, 00-017 Warszawa"


def test_committed_vectors_are_valid() -> None:
    committed = json.loads((ROOT / "docs" / "protocol-vectors.json").read_text())
    assert committed == make_vectors()


def test_inspect_header_and_plaintext(vectors: list[dict], tmp_path: Path) -> None:
    c1 = vectors[2]
    f = tmp_path / "c1.cose"
    f.write_bytes(bytes.fromhex(c1["message_hex"]))
    r = citywatch("protocol", "inspect", str(f))
    assert r.returncode == 0, r.stderr
    head = json.loads(r.stdout)
    assert (head["name"], head["kid"], head["alg"]) == ("C1", c1["kid_hex"], "A128GCM")
    assert "plaintext" not in head
    r = citywatch(
        "protocol", "inspect", "--key-hex", c1["key_hex"], "-", stdin=c1["message_hex"].encode()
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plaintext"] == {"td": 1_764_000_005_000, "uid": "WAW-MOK-0042"}


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (lambda b: b[:-1], "envelope"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:], "auth"),
        (lambda b: b"\x00" + b, "envelope"),
        (lambda b: b"not a message", "envelope"),
    ],
)
def test_inspect_names_the_failed_check(vectors: list[dict], tmp_path: Path, mutate, check) -> None:
    v = vectors[2]
    f = tmp_path / "m.cose"
    f.write_bytes(mutate(bytes.fromhex(v["message_hex"])))
    r = citywatch("protocol", "inspect", "--key-hex", v["key_hex"], str(f))
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and f"check failed: {check}:" in lines[0]


def test_inspect_with_the_wrong_key_length_or_alg(vectors: list[dict], tmp_path: Path) -> None:
    v = vectors[2]
    f = tmp_path / "m.cose"
    f.write_bytes(bytes.fromhex(v["message_hex"]))
    r = citywatch("protocol", "inspect", "--key-hex", "00" * 32, str(f))
    assert r.returncode == 1 and b"check failed: alg:" in r.stderr
    r = citywatch("protocol", "inspect", "--key-hex", "00" * 5, str(f))
    assert r.returncode == 1 and b"check failed: key:" in r.stderr


def test_inspect_missing_file_is_a_clear_error() -> None:
    r = citywatch("protocol", "inspect", "/nonexistent/msg.cose")
    assert r.returncode == 2 and b"cannot read /nonexistent/msg.cose" in r.stderr
