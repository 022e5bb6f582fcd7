"""Session fixtures for real services (registered in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .nats import NatsCluster, start_nats_cluster
from .services import Broker, Postgres, ServiceUnavailable, start_mosquitto, start_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for the whole session (skips with the reason if it cannot run)."""
    try:
        pg = start_postgres()
    except ServiceUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield pg
    pg.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto broker on a free loopback port, one per test."""
    try:
        b = start_mosquitto(tmp_path / "broker")
    except ServiceUnavailable as exc:
        pytest.skip(f"Mosquitto unavailable: {exc}")
    yield b
    b.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A real three-node NATS cluster (JetStream, MQTT gateway) on loopback, one per test."""
    try:
        c = start_nats_cluster(tmp_path / "nats")
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    yield c
    c.stop()


SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (labelled images, fall videos); skips with the reason where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data folder {SHARED_DATA} is absent (it is only on development "
            "and CI machines)"
        )
    return SHARED_DATA
