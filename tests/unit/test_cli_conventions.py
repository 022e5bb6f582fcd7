"""Conventions a user meets on the command line: ``citywatch --version``, one spelling of
``--log-level``, and a help line for every subcommand and option (the argparse tree is
walked, component by component)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from citywatch.cli import COMPONENTS, build_parser, main


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", argparse.Action([], name, help=helps.get(name))
                yield from _walk(sub, f"{path} {name}")


def _tree(component: str) -> argparse.ArgumentParser:
    try:
        return build_parser([component])
    except Exception as exc:  # a component whose dependencies are not installed
        pytest.skip(f"citywatch {component}: {exc}")


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_subcommand_and_option_has_a_help_line(component: str) -> None:
    missing = []
    for path, action in _walk(_tree(component), "citywatch"):
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_one_spelling_of_log_level(component: str) -> None:
    for path, action in _walk(_tree(component), "citywatch"):
        if "log" in action.dest and action.option_strings:
            assert action.option_strings == ["--log-level"], path
            assert tuple(action.choices or ()) == ("debug", "info", "warning", "error"), path
            assert action.default == "info" and action.type is str.lower, path


def test_run_commands_take_log_level() -> None:
    for component in ("server", "enc", "edge"):
        sub = next(
            a for a in _tree(component)._actions if isinstance(a, argparse._SubParsersAction)
        )
        comp = sub.choices[component]
        commands = next(a for a in comp._actions if isinstance(a, argparse._SubParsersAction))
        run = commands.choices["run"]
        assert any(a.dest == "log_level" for a in run._actions), component
        args = run.parse_args(["--config", "x.toml", "--log-level", "WARNING"])
        assert args.log_level == "warning"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"citywatch {version('citywatch')}"
