"""Every ``python -m experiments.*`` / ``benchmarks.*`` command the README shows parses.

Each command runs its module as ``__main__`` with its own arguments up to ``tyro.cli``, which
parses them for real and then stops the run (the smoke tests in ``test_studies.py`` run the
studies' ``main``). ``<placeholders>`` become a path, ``{a,b}`` one command per choice and a
trailing ``...`` is dropped.
"""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import tyro

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = re.compile(r"python3? -m ((?:experiments|benchmarks)\.\w+)([^`\n&|]*)")


class Parsed(Exception):
    pass


def readme_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for module, rest in COMMAND.findall(README.read_text()):
        rest = re.sub(r"<[^>]+>", "/tmp/placeholder", rest.replace("...", ""))
        choices = re.search(r"\{([\w,]+)\}", rest)
        for choice in choices.group(1).split(",") if choices else [None]:
            text = rest if choice is None else rest.replace(choices.group(0), choice)
            commands.append((module, shlex.split(text, comments=True)))
    return sorted({(m, tuple(a)) for m, a in commands})


def test_the_readme_shows_commands():
    modules = {m for m, _ in readme_commands()}
    assert {"experiments.quickstart", "experiments.sbd", "benchmarks.sac_throughput"} <= modules


@pytest.mark.parametrize(
    "module,argv", [pytest.param(m, a, id=" ".join((m, *a))) for m, a in readme_commands()]
)
def test_readme_command_parses(module, argv, monkeypatch):
    cli = tyro.cli

    def parse_then_stop(*args, **kwargs):
        cli(*args, **kwargs)
        raise Parsed

    monkeypatch.setattr(tyro, "cli", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *argv])
    with pytest.raises((Parsed, SystemExit)) as stopped:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    if stopped.type is SystemExit:  # --help exits 0; a bad flag exits 2
        assert stopped.value.code == 0 and "--help" in argv, f"{module} {argv}: does not parse"
