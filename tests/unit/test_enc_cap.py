"""CAP 1.2 exports, validated against the OASIS CAP 1.2 schema kept in tests/data/cap."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema

import enc
from tests.support.world import T0, jpeg
from tests.unit.test_enc_store import received

STORE_KEY = bytes(range(32))
"""The store key photos and positions are sealed under in these tests."""

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "cap" / "CAP-v1.2.xsd"
NS = {"cap": enc.CAP_NAMESPACE}
SETTINGS = enc.CapSection(
    sender="enc.district1@city.invalid", status="Exercise", public_url="https://enc.city.invalid"
)


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    # The copy we keep is the one the NOTICE describes, byte for byte.
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest == "dd73a2e1f76efa451814b02b127bbf4c86cedc7bb21a77204231c38c84d8fd36"
    return xmlschema.XMLSchema(str(SCHEMA_FILE))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[enc.AlertStore]:
    s = enc.AlertStore.open(f"sqlite:///{tmp_path / 'enc.sqlite3'}", key=STORE_KEY)
    yield s
    s.close()


def export(store: enc.AlertStore, inc: str = "inc-1", settings: enc.CapSection = SETTINGS) -> bytes:
    return enc.cap_message(
        store.alert(inc), store.audit_trail(inc), settings, photo=store.photo(inc)
    )


def text(xml: bytes, path: str) -> str:
    found = ET.fromstring(xml).find(path, NS)
    assert found is not None and found.text is not None, path
    return found.text


def act(store: enc.AlertStore, action: str, at: int, **kw: str) -> None:
    enc.apply_action(store, "inc-1", action, operator="olga", role="supervisor", now=at, **kw)


def test_new_alert_is_a_valid_cap_alert(store: enc.AlertStore, schema: xmlschema.XMLSchema) -> None:
    photo = jpeg((120, 90))
    store.record_alert(received(photo=photo), received_at=T0 + 250)
    xml = export(store)
    schema.validate(xml)
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert text(xml, "cap:identifier") == "citywatch.inc-1"
    assert text(xml, "cap:sender") == "enc.district1@city.invalid"
    assert text(xml, "cap:sent") == enc.cap_time(T0 + 250) == "2025-11-24T16:00:00-00:00"
    assert (text(xml, "cap:status"), text(xml, "cap:msgType"), text(xml, "cap:scope")) == (
        "Exercise",
        "Alert",
        "Restricted",
    )
    assert ET.fromstring(xml).find("cap:references", NS) is None
    info = "cap:info/"
    assert text(xml, info + "cap:category") == "Health"
    assert text(xml, info + "cap:event") == "Person down"
    assert (
        text(xml, info + "cap:urgency"),
        text(xml, info + "cap:severity"),
        text(xml, info + "cap:certainty"),
    ) == ("Immediate", "Severe", "Likely")
    assert text(xml, info + "cap:area/cap:circle") == "50.060000,19.940000 0.050"
    assert "pole-1" in text(xml, info + "cap:area/cap:areaDesc")
    assert text(xml, info + "cap:resource/cap:digest") == hashlib.sha1(photo).hexdigest()
    assert text(xml, info + "cap:resource/cap:size") == str(len(photo))
    assert text(xml, info + "cap:web") == "https://enc.city.invalid/alerts/inc-1"
    # The same state exports the same message.
    assert export(store) == xml


def test_dispatched_alert_is_an_update_referencing_the_original(
    store: enc.AlertStore, schema: xmlschema.XMLSchema
) -> None:
    store.record_alert(received(), received_at=T0)
    original = export(store)
    act(store, "acknowledge", T0 + 10_000)
    act(store, "dispatch", T0 + 20_000, unit="Ambulance 7", comment="on its way")
    xml = export(store)
    schema.validate(xml)
    assert text(xml, "cap:msgType") == "Update"
    assert text(xml, "cap:identifier") != text(original, "cap:identifier")
    assert text(xml, "cap:sent") == enc.cap_time(T0 + 20_000)
    assert (
        text(xml, "cap:references")
        == f"enc.district1@city.invalid,citywatch.inc-1,{enc.cap_time(T0)}"
    )
    assert "Ambulance 7" in text(xml, "cap:note")
    assert text(xml, "cap:info/cap:certainty") == "Observed"
    assert "Ambulance 7" in text(xml, "cap:info/cap:instruction")


def test_dismissed_alert_is_a_cancel_referencing_the_original(
    store: enc.AlertStore, schema: xmlschema.XMLSchema
) -> None:
    store.record_alert(received(), received_at=T0)
    act(store, "dismiss", T0 + 30_000, reason="a mannequin <&> outside the shop")
    xml = export(store)
    schema.validate(xml)
    assert text(xml, "cap:msgType") == "Cancel"
    assert text(xml, "cap:references").split(",")[1] == "citywatch.inc-1"
    assert "a mannequin <&> outside the shop" in text(xml, "cap:note")
    assert text(xml, "cap:info/cap:urgency") == "Past"
    # Reopened after the false alarm: an update again, still referencing the original.
    act(store, "reopen", T0 + 40_000, reason="second look")
    xml = export(store)
    schema.validate(xml)
    assert text(xml, "cap:msgType") == "Update"
    assert text(xml, "cap:references").split(",")[1] == "citywatch.inc-1"


@pytest.mark.parametrize(
    ("inc", "device", "label", "score"),
    [
        ("a b,c<d&e", "pole\x01\x02 \u00e9\u4e2d", "fight", 0.42),
        ("x" * 64, "p", "x", 0.0),
        ("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "pole-999", "unknown_thing", 1.0),
    ],
)
def test_odd_ids_and_text_still_validate(
    store: enc.AlertStore,
    schema: xmlschema.XMLSchema,
    inc: str,
    device: str,
    label: str,
    score: float,
) -> None:
    import dataclasses

    r = dataclasses.replace(received(inc, device=device), label=label, score=score)
    store.record_alert(r, received_at=T0)
    xml = export(store, inc, enc.CapSection())
    schema.validate(xml)
    ident = text(xml, "cap:identifier")
    assert not set(ident) & set(" ,<&")
    assert text(xml, "cap:info/cap:severity") in ("Severe", "Moderate")


def test_invalid_message_is_caught_by_the_schema(
    store: enc.AlertStore, schema: xmlschema.XMLSchema
) -> None:
    # The check is real: a message with a "Z" time zone (forbidden in CAP 1.2) fails.
    store.record_alert(received(), received_at=T0)
    bad = export(store).replace(b"-00:00</sent>", b"Z</sent>")
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schema.validate(bad)
