"""Every ``python -m experiments.*`` / ``benchmarks.*`` command the README shows parses, and
its Python snippets call the API as it is (the self-contained ones run).

Each command runs its module as ``__main__`` with its own arguments up to ``tyro.cli``, which
parses them for real and then stops the run (the smoke tests in ``test_studies.py`` run the
studies' ``main``). ``<placeholders>`` become a path, ``{a,b}`` one command per choice and a
trailing ``...`` is dropped.
"""

from __future__ import annotations

import ast
import inspect
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


# ------------------------------------------------------- the README's Python snippets: the API

SNIPPET = re.compile(r"```python\n(.*?)```", re.S)
RUNNABLE = ('envs.make("GoalSequence")', "env.reset_to(gym.data.qpos")  # self-contained ones


def snippets() -> list[tuple[int, str]]:
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in SNIPPET.finditer(text)]


def resolve(node: ast.expr, names: dict):
    """The object a ``name.attr.attr`` expression names in ``names``, or None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = resolve(node.value, names)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


@pytest.mark.parametrize("line,code", [pytest.param(n, c, id=f"line {n}") for n, c in snippets()])
def test_readme_snippet_calls_match_the_api(line, code):
    """Every import in the snippet exists, and every call of an imported function or class
    binds to its signature (the argument names and counts the README shows are accepted)."""
    tree = ast.parse(code)
    names: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), f"README.md:{line}", "exec"), names)
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or any(isinstance(a, ast.Starred) for a in node.args):
            continue
        target = resolve(node.func, names)
        if target is None or not callable(target):
            continue
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # builtins without a signature
            continue
        kwargs = {k.arg: None for k in node.keywords if k.arg is not None}
        call = ast.unparse(node)
        try:
            signature.bind(*[None] * len(node.args), **kwargs)
        except TypeError as err:
            raise AssertionError(f"README.md:{line}: {call}: {err}") from None
        checked += 1
    assert checked or "import" not in code, f"README.md:{line}: no call checked"


@pytest.mark.parametrize(
    "line,code",
    [pytest.param(n, c, id=f"line {n}") for n, c in snippets() if any(r in c for r in RUNNABLE)],
)
def test_self_contained_readme_snippets_run(line, code):
    exec(compile(code, f"README.md:{line}", "exec"), {})
