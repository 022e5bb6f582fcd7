"""Message type 10, N3 "linked report" (S -> ENC, POST /v1/reports): a report the
server fused into an alert it sent before, answered with an N2 whose ``inc`` is the
report's id and whose ``h`` is H(N3). Sans-I/O, through the real roles."""

from __future__ import annotations

import hashlib
import secrets

import cbor2
import pytest

import protocol as p
from tests.support.world import T0

KID = bytes.fromhex("5e5e5e5e00000001")
KEY = bytes(range(32))
HERE = p.Coords(lat=52.2297, lon=21.0122, alt=None, acc=4.0, src="gps")


def roles() -> tuple[p.EncNotifier, p.EncEndpoint]:
    notifier = p.EncNotifier(kid=KID, cipher=p.AesGcmCipher(KEY), random=secrets.token_bytes)
    enc = p.EncEndpoint(servers={KID: p.AesGcmCipher(KEY)}, random=secrets.token_bytes)
    return notifier, enc


def n3(
    notifier: p.EncNotifier, *, now: int = T0, rep: str = "inc-rep-2", label: str = "fight"
) -> bytes:
    return notifier.linked_report(
        incident_id="inc-alert-1",
        report_id=rep,
        coords=HERE,
        photo=b"\xff\xd8 a jpeg \xff\xd9",
        score=0.91,
        label=label,
        captured_at=now - 1500,
        device_uid="pole-9",
        now=now,
    )


def test_n3_round_trip_and_its_n2_confirms_the_report() -> None:
    notifier, enc = roles()
    data = n3(notifier)
    [ev] = enc.receive_report(data, T0)
    assert isinstance(ev, p.LinkedReportReceived)
    assert (ev.incident_id, ev.report_id, ev.label, ev.device_uid, ev.score) == (
        "inc-alert-1",
        "inc-rep-2",
        "fight",
        "pole-9",
        0.91,
    )
    assert ev.n3_hash == hashlib.sha256(data).digest()
    assert notifier.pending() == ["inc-rep-2"]
    receipt = enc.report_receipt(ev, T0 + 5)
    assert p.decode_envelope(receipt, max_size=4096).type == p.MessageType.N2
    [ok] = notifier.receive(receipt, T0 + 5)
    assert isinstance(ok, p.AlertConfirmed) and ok.incident_id == "inc-rep-2"
    assert notifier.pending() == []


def test_each_endpoint_takes_only_its_own_type() -> None:
    notifier, enc = roles()
    [dropped] = enc.receive(n3(notifier), T0)  # /v1/alerts: N1 only
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "unexpected"
    n1 = notifier.alert(
        incident_id="inc-x",
        coords=HERE,
        photo=b"\xff\xd8\xff\xd9",
        score=0.9,
        label="fall",
        captured_at=T0 - 10,
        device_uid="pole-1",
        now=T0,
    )
    [dropped] = enc.receive_report(n1, T0)  # /v1/reports: N3 only
    assert isinstance(dropped, p.MessageDropped) and dropped.reason == "unexpected"


def test_replay_window_and_strict_plaintext() -> None:
    notifier, enc = roles()
    data = n3(notifier)
    assert isinstance(enc.receive_report(data, T0)[0], p.LinkedReportReceived)
    assert enc.receive_report(data, T0)[0].reason == "replay"  # type: ignore[attr-defined]
    late = n3(notifier, now=T0 - 10 * 60_000, rep="inc-rep-3")
    assert enc.receive_report(late, T0)[0].reason == "timestamp"  # type: ignore[attr-defined]
    m = p.N3LinkedReport(
        ts=T0, inc="a", rep="b", gc=HERE, pf=b"\xff\xd8", sc=0.5, lb="fall", at=T0, dev="d"
    ).to_map()
    assert p.decode_plaintext(10, cbor2.dumps(m)) == p.N3LinkedReport.from_map(m)
    with pytest.raises(p.InvalidPlaintext, match="unknown key"):
        p.decode_plaintext(10, cbor2.dumps({**m, "addr": "Main St 1"}))
    with pytest.raises(p.InvalidPlaintext, match="lacks key"):
        p.decode_plaintext(10, cbor2.dumps({k: v for k, v in m.items() if k != "rep"}))
    with pytest.raises(p.InvalidPlaintext, match="rep must differ"):
        p.decode_plaintext(10, cbor2.dumps({**m, "rep": "a"}))
    # N1 is unchanged: it still refuses a key it does not know.
    with pytest.raises(p.InvalidPlaintext, match="unknown key"):
        p.decode_plaintext(
            7, cbor2.dumps({k: v for k, v in m.items() if k != "rep"} | {"rep": "b"} | {"inc": "a"})
        )
