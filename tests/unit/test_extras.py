"""A pole installs only what a pole runs: every third-party module a component imports
(at the top or inside a function) comes from a distribution of its extra in
pyproject.toml (with the core dependencies and the extras it names), and [dev] holds them
all."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {
    "citywatch",
    "protocol",
    "hardware",
    "edge",
    "server",
    "enc",
    "storage",
    "httpserve",
    "tests",
}
# Imported by name through importlib (optional drivers) rather than an import statement.
BY_NAME = {"edge": {"ai_edge_litert", "systemd"}, "server": {"systemd"}, "enc": {"systemd"}}
# Modules a package's requirement brings with it (FastAPI's own dependencies).
CARRIED = {"starlette", "anyio", "pydantic_core", "annotated_types", "typing_extensions"}
# The code each component runs (the server imports the edge's pose models; the ENC only
# hardware's service module and key stores, not its camera or GNSS drivers).
USES = {
    "edge": ["edge/**/*.py", "hardware/**/*.py", "protocol/*.py"],
    "server": [
        "server/**/*.py",
        "edge/**/*.py",
        "hardware/**/*.py",
        "protocol/*.py",
        "storage/*.py",
        "httpserve/*.py",
    ],
    "enc": ["enc/**/*.py", "hardware/*.py", "protocol/*.py", "storage/*.py", "httpserve/*.py"],
}
# Imported where an ImportError is caught and reported when the driver is chosen.
OPTIONAL = {"enc": {"pkcs11"}}


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def _closure(extra: str) -> set[str]:
    project = _project()
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    out = _names(project["dependencies"])  # type: ignore[arg-type]
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in extras[name]:
            m = re.fullmatch(r"citywatch\[([a-z,]+)\]", req)
            if m:
                todo += m.group(1).split(",")
            else:
                out |= _names([req])
    return out


def _imports(pattern: str) -> set[str]:
    found: set[str] = set()
    for path in ROOT.glob(pattern):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - FIRST_PARTY


@pytest.mark.parametrize("component", sorted(USES))
def test_the_extra_covers_what_the_component_imports(component: str) -> None:
    distributions = importlib.metadata.packages_distributions()
    modules = set().union(*(_imports(p) for p in USES[component])) | BY_NAME.get(component, set())
    wanted = _closure(component)
    missing = []
    for module in sorted(modules - CARRIED - OPTIONAL.get(component, set())):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & wanted:
            missing.append(f"{module} ({', '.join(sorted(dists))})")
    assert missing == []


def test_a_pole_gets_no_server_or_enc_packages() -> None:
    pole = _closure("edge")
    assert not pole & {
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "jinja2",
        "argon2-cffi",
        "pillow",
        "pytest",
    }


def test_dev_installs_every_extra() -> None:
    extras: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    dev = _closure("dev")
    for name in extras:
        assert _closure(name) <= dev, name
