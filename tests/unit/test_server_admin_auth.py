"""Every /v1 operation of the admin API refuses a caller without the bearer token: walked
over the app's routes, so that a new route (or a lost ``dependencies=[Auth]``) is caught."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

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


def test_every_v1_route_needs_the_token(server: TrustedServer) -> None:
    ctx = AdminContext.of(
        server.config,
        server.store,
        server.metrics,
        changed=server.wake,
        mqtt_connected=lambda: server.mqtt_connected,
    )
    app = admin_app(ctx)
    client = TestClient(app)
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/v1")]
    assert len(routes) >= 12
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path).replace("/x/x", "/x/block")
        for method in route.methods:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                answer = client.request(method, path, headers=headers, json={})
                assert answer.status_code == 401, (method, route.path, headers)
