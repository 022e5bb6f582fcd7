"""The admin HTTP API, in-process (no broker needed): the token, the operations, and
schemathesis against its own OpenAPI schema (no 500s, answers match the schema)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from server import TrustedServer, example_config, load_config
from server._admin import AdminContext, admin_app
from tests.support.services import free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TrustedServer]:
    path = tmp_path / "server.toml"
    path.write_text(
        example_config(data_dir="./var").replace("port = 8600", f"port = {free_port()}")
    )
    s = TrustedServer(load_config(path))
    yield s
    s.store.close()


def _context(server: TrustedServer, *, connected: bool | None = None) -> AdminContext:
    return AdminContext.of(
        server.config,
        server.store,
        server.metrics,
        changed=server.wake,
        mqtt_connected=lambda: server.mqtt_connected if connected is None else connected,
    )


@pytest.fixture
def client(server: TrustedServer) -> TestClient:
    ctx = _context(server)
    return TestClient(admin_app(ctx), headers={"Authorization": f"Bearer {ctx.token}"})


def test_token_is_required(client: TestClient) -> None:
    assert client.get("/v1/devices", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/devices", headers={"Authorization": ""}).status_code == 401
    assert client.get("/v1/devices").status_code == 200
    # No token needed; the server in this test never connected to a broker: 503.
    health = client.get("/healthz", headers={"Authorization": ""})
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "mqtt_connected": False, "outbox_depth": 0}
    assert "citywatch_server_outbox_depth" in client.get("/metrics").text


def test_registry_windows_and_audit_through_the_api(client: TestClient) -> None:
    r = client.post(
        "/v1/devices",
        json={"uid": "pole-1", "zone": "z", "lat": 52.0, "lon": 21.0, "alg": "A128GCM"},
        headers={"X-Actor": "alice"},
    )
    assert r.status_code == 201
    bundle = r.json()
    assert bundle["alg"] == "A128GCM" and len(bytes.fromhex(bundle["key_hex"])) == 16
    assert (
        client.post(
            "/v1/devices", json={"uid": "pole-1", "zone": "z", "lat": 0, "lon": 0}
        ).status_code
        == 409
    )
    assert client.post("/v1/devices/pole-1/block").json()["status"] == "blocked"
    assert client.post("/v1/devices/ghost/block").status_code == 404
    assert client.get("/v1/devices/pole-1").json()["blocked"] is True
    assert (
        client.post("/v1/windows/z/open", json={"until": "2000-01-01T00:00:00Z"}).status_code == 400
    )
    assert (
        client.post("/v1/windows/z/open", json={"until": "2099-01-01T00:00:00Z"}).status_code == 201
    )
    assert client.get("/v1/windows").json()["zones"] == [
        {"zone": "z", "monitored_until": 4070908800000}
    ]
    assert client.post("/v1/windows/z/close").json() == {
        "zone": "z",
        "closed": 1,
        "monitored_until": None,
    }
    assert client.delete("/v1/devices/pole-1").status_code == 204
    assert client.get("/v1/incidents").json() == []
    assert client.get("/v1/incidents/nope").status_code == 404
    actions = [(a["actor"], a["action"]) for a in reversed(client.get("/v1/audit").json())]
    assert actions == [
        ("api:alice", "device.add"),
        ("api", "device.block"),
        ("api", "window.open"),
        ("api", "window.close"),
        ("api", "device.delete"),
    ]


def test_admin_api_against_its_openapi_schema(server: TrustedServer) -> None:
    """Every operation, a bounded number of generated requests each: never a 500, and
    every answer as the schema says."""
    # As if connected to a broker: /healthz answers 200, not its documented 503.
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", admin_app(_context(server, connected=True))
    )
    token = server.config.path(server.config.admin.token_file).read_text().strip()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"},
                checks=[not_a_server_error, response_schema_conformance],
            )

        check()
