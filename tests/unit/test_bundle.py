"""One provisioning-bundle type: what the server writes is what the pole and the simulator
read; a bad bundle is refused naming the field, never echoing the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol import BrokerAddress, InvalidBundle, ProvisioningBundle

KEY_HEX = "00112233445566778899aabbccddeeff" * 2


def raw(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uid": "pole-0042",
        "kid_hex": "0123456789abcdef",
        "alg": "A256GCM",
        "key_hex": KEY_HEX,
        "zone": "old-town",
        "lat": 52.2297,
        "lon": 21,
        "server": {
            "host": "broker.example",
            "port": 8883,
            "tls": True,
            "ca_pem": "PEM\n",
            "topic_prefix": "cw/v1",
        },
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def test_round_trip_through_json() -> None:
    bundle = ProvisioningBundle.parse(raw())
    assert bundle.server == BrokerAddress(
        host="broker.example", port=8883, tls=True, ca_pem="PEM\n", topic_prefix="cw/v1"
    )
    assert bundle.lon == 21.0 and isinstance(bundle.lon, float)
    again = ProvisioningBundle.parse(json.loads(json.dumps(bundle.to_json())))
    assert again == bundle
    assert KEY_HEX not in repr(bundle)


def test_alternates_round_trip_and_come_after_the_broker() -> None:
    server = raw()["server"] | {
        "alternates": [{"host": "b2.example", "port": 8883}, {"host": "b3.example", "port": 1883}]
    }
    bundle = ProvisioningBundle.parse(raw(server=server))
    assert bundle.server is not None
    assert bundle.server.endpoints == (
        ("broker.example", 8883),
        ("b2.example", 8883),
        ("b3.example", 1883),
    )
    assert ProvisioningBundle.parse(json.loads(json.dumps(bundle.to_json()))) == bundle
    # A bundle without alternates is written as before (older poles read it).
    plain = ProvisioningBundle.parse(raw())
    assert "alternates" not in plain.to_json()["server"]


def test_key_only_bundle() -> None:
    bundle = ProvisioningBundle.parse(raw(zone=..., lat=..., lon=..., server=...))
    assert bundle.server is None and bundle.zone is None
    assert set(bundle.to_json()) == {"uid", "kid_hex", "alg", "key_hex"}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"server": {"host": "b", "port": "1883"}}, "server.port"),
        ({"server": {"host": "b", "port": 70000}}, "server.port"),
        ({"server": {"port": 1883}}, "server.host"),
        ({"server": {"host": "b", "user": "x"}}, "unknown keys"),
        ({"server": "broker"}, "'server' must be an object"),
        ({"server": {"host": "b", "alternates": "b2:1883"}}, "server.alternates' must be a list"),
        ({"server": {"host": "b", "alternates": [{"host": "b2"}]}}, r"server.alternates\[0\]"),
        (
            {"server": {"host": "b", "alternates": [{"host": "b2", "port": 0}]}},
            r"server.alternates\[0\]",
        ),
        (
            {"server": {"host": "b", "alternates": [{"host": "", "port": 1883}]}},
            r"server.alternates\[0\]",
        ),
        ({"server": {"host": "b", "tls": "yes"}}, "server.tls"),
        ({"lat": "52"}, "'lat' must be a number"),
        ({"lon": True}, "'lon' must be a number"),
        ({"zone": 7}, "'zone' must be a string"),
        ({"alg": "A128GCM"}, "takes a 16-byte key"),
        ({"kid_hex": "0123"}, "kid_hex"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_bad_bundles_name_the_field(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidBundle, match=words) as caught:
        ProvisioningBundle.parse(raw(**changes))
    assert KEY_HEX not in str(caught.value)


def test_the_server_writes_what_the_devices_read(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy", reason="the server's dependencies are not installed")
    from server import example_config, load_config, open_store, provisioning_bundle, write_bundle

    path = tmp_path / "server.toml"
    path.write_text(example_config(data_dir="./var"))
    cfg = load_config(path)
    store, _ = open_store(cfg, announce=False)
    try:
        device, key = store.add_device(
            uid="pole-7", zone="z", lat=52.0, lon=21.0, alg=3, actor="test"
        )
    finally:
        store.close()
    out = tmp_path / "pole-7.json"
    write_bundle(out, provisioning_bundle(cfg, device, key))
    bundle = ProvisioningBundle.parse(json.loads(out.read_text()))
    assert (bundle.uid, bundle.kid, bundle.key, bundle.zone) == ("pole-7", device.kid, key, "z")
    assert bundle.server is not None and bundle.server.host == "localhost"


def test_the_server_writes_the_clusters_other_endpoints(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy", reason="the server's dependencies are not installed")
    from server import example_config, load_config, open_store, provisioning_bundle

    path = tmp_path / "server.toml"
    text = example_config(data_dir="./var")
    assert "device_alternates = []\n" in text
    path.write_text(
        text.replace(
            "device_alternates = []\n",
            'device_alternates = ["node-2.example:1884", "node-3:1885"]\n',
        )
    )
    cfg = load_config(path)
    store, _ = open_store(cfg, announce=False)
    try:
        device, key = store.add_device(
            uid="pole-8", zone="z", lat=52.0, lon=21.0, alg=3, actor="test"
        )
    finally:
        store.close()
    server = provisioning_bundle(cfg, device, key).server
    assert server is not None
    assert server.alternates == (("node-2.example", 1884), ("node-3", 1885))
