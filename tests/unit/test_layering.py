"""The layers import downwards only: the ``citywatch`` dispatcher loads the components and
catches their root errors; no component imports the dispatcher, and the admin API does not
import the server application it serves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from citywatch.cli import ROOT_ERRORS, main

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("edge", "server", "enc", "protocol", "hardware")


def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved in its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("component", COMPONENTS)
def test_no_component_imports_the_dispatcher(component: str) -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / component).rglob("*.py"))
        if any(m == "citywatch" or m.startswith("citywatch.") for m in _imports(path))
    ]
    assert offenders == []


def test_admin_api_and_server_app_do_not_import_each_other() -> None:
    assert not {m for m in _imports(ROOT / "server" / "_admin.py") if m.startswith("server._app")}
    # The application starts the admin API (downwards); the API sees only its context.
    assert "server._admin.serve_admin" in _imports(ROOT / "server" / "_app.py")


def test_every_component_names_its_root_errors() -> None:
    from citywatch.cli import COMPONENTS as DISPATCHED

    assert set(ROOT_ERRORS) == set(DISPATCHED)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["server", "incidents", "--config", "/nonexistent/server.toml"], "server.toml"),
        (["enc", "alerts", "--config", "/nonexistent/enc.toml"], "enc.toml"),
        (["edge", "status", "--config", "/nonexistent/edge.toml"], "edge.toml"),
    ],
)
def test_a_component_error_is_one_line_and_status_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("citywatch: ") and words in err
    assert "Traceback" not in err and err.count("\n") == 1
