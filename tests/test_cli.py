"""The ``spray`` command's interface: every command, option and positional is documented."""

from __future__ import annotations

import argparse

from spray.cli.main import _parser


def _parsers(parser: argparse.ArgumentParser, name: str = "spray"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from _parsers(child, f"{name} {sub}")


def test_every_option_and_positional_has_help_text():
    missing = [f"{name}: {action.dest}" for name, parser in _parsers(_parser())
               for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and not action.help]
    assert not missing, "no help text: " + ", ".join(missing)


def test_every_command_has_a_description_in_the_overview():
    commands = {name: p for name, p in _parsers(_parser()) if name.count(" ") == 1}
    assert {"spray run", "spray validate", "spray demo", "spray report", "spray check",
            "spray export"} <= set(commands)
    overview = _parser().format_help()
    for name in commands:
        assert name.split()[1] in overview
