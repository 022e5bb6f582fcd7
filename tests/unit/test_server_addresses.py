"""Street addresses in the server's registry (SQLite and PostgreSQL): what is stored,
what is refused, and which settings are still to send to the ENC (an N4 each) after a
confirmation that raced a newer setting."""

from __future__ import annotations

import pytest

from server import DeviceNotFound, RegistryError, Store

# The registry's fixtures: a store on SQLite and on PostgreSQL, and its clock.
from tests.unit.test_server_store import Clock, clock, db_url, store

__all__ = ["clock", "db_url", "store"]


def _add(store: Store, uid: str, address: str | None = None) -> None:
    store.add_device(uid=uid, zone="z", lat=52.0, lon=21.0, alg=3, actor="test", address=address)


def test_an_address_is_kept_cleaned_and_sent_until_confirmed(store: Store, clock: Clock) -> None:
    _add(store, "pole-a", "  ul. Marszałkowska\t104 ")
    _add(store, "pole-b")
    assert store.get_device("pole-a").address == "ul. Marszałkowska 104"
    assert store.get_device("pole-b").address is None
    [todo] = store.addresses_to_send()
    assert (todo.uid, todo.address, todo.version) == ("pole-a", "ul. Marszałkowska 104", clock.now)
    store.address_sent("pole-a", todo.version)
    assert store.addresses_to_send() == []
    # Removing it is a setting to send too (the ENC withdraws the old one).
    clock.now += 10
    store.set_device_address("pole-a", "", actor="test")
    [todo] = store.addresses_to_send()
    assert (todo.uid, todo.address, todo.version) == ("pole-a", None, clock.now)
    # The same address again changes nothing and sends nothing.
    store.address_sent("pole-a", todo.version)
    store.set_device_address("pole-a", None, actor="test")
    assert store.addresses_to_send() == []
    trail = [e for e in store.audit_log(subject="pole-a") if e.action == "device.address"]
    assert [e.detail["address"] for e in trail] == [""]
    add = next(e for e in store.audit_log(subject="pole-a") if e.action == "device.add")
    assert add.detail["address"] == "ul. Marszałkowska 104"


def test_a_confirmation_of_an_older_setting_leaves_the_newer_to_send(
    store: Store, clock: Clock
) -> None:
    _add(store, "pole-a", "Plac Zamkowy 1")
    [old] = store.addresses_to_send()
    # Set again (in the same millisecond even) while the N4 of the old one is in flight.
    new = store.set_device_address("pole-a", "Plac Zamkowy 2", actor="test")
    store.address_sent("pole-a", old.version)
    [todo] = store.addresses_to_send()
    assert todo.address == new.address == "Plac Zamkowy 2" and todo.version > old.version


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("line one\nline two", "control characters"),
        ("x" * 201, "at most 200 characters"),
    ],
)
def test_a_bad_address_is_refused_with_a_message(store: Store, address: str, message: str) -> None:
    _add(store, "pole-a")
    with pytest.raises(RegistryError, match=message):
        store.set_device_address("pole-a", address, actor="test")
    with pytest.raises(RegistryError, match=message):
        _add(store, "pole-b", address)
    with pytest.raises(DeviceNotFound, match="pole-x"):
        store.set_device_address("pole-x", "Plac Zamkowy 1", actor="test")
    assert store.addresses_to_send() == []
