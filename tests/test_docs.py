"""Every command documents itself, and the README's commands are the real ones."""

import argparse
from pathlib import Path

from agent.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _walk(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_command_and_option_has_help():
    for path, parser in _walk(build_parser()):
        assert parser.description, f"igris {' '.join(path)} has no description"
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert action.help, f"igris {' '.join(path)} {action.option_strings} has no help"


def test_readme_first_screen_names_the_two_commands_and_ci_runs_the_test_one():
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:30])
    assert "./dev run" in first_screen and "./dev test" in first_screen
    assert "./dev test" in (REPO / ".ci" / "run").read_text()


def test_configuration_doc_lists_every_setting():
    from agent.config.schema import section_keys

    doc = (REPO / "docs" / "configuration.md").read_text()
    for section, keys in section_keys().items():
        for key in keys:
            assert f"| {section} | {key}" in doc or f" {key}," in doc or f", {key}" in doc, (
                f"[{section}] {key} is not documented in docs/configuration.md"
            )
