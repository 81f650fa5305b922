"""The documentation's commands, checked so that they cannot drift from the code.

* README.md opens with ``make demo`` and ``make test``.
* README blocks preceded by ``<!-- readme-test: run -->`` (the quick commands, seconds) and
  ``<!-- readme-test: run recipe -->`` (the stage-by-stage CPU recipe: 15 s in one process on a quiet 2-core
  CPU, about a minute under heavy load) are executed, command by command, in a fresh folder, in ``make test``.
* Every other ``edg`` command in README.md must say what it costs (a trailing comment with a duration, e.g.
  ``# GPU cluster, ~10 GPU-hours``) and, like every ``edg`` command in docs/*.md and in the examples of each
  command's ``--help``, is parsed by the real parser (``cluster.cli.build_parser``): the flags must exist and
  their values must parse. ``make`` targets must exist in the Makefile.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*readme-test:\s*(run(?:\s+recipe)?)\s*-->")
DURATION = re.compile(r"\b(?:seconds?|min|minutes?|hours?|GPU-hours?|days?)\b|\d\s*(?:s|h)\b", re.I)


@dataclass
class Command:
    """One shell command of a document: ``text`` without its trailing comment, ``comment`` that comment."""
    where: str      # file:line
    text: str
    comment: str
    mode: str       # "run", "run recipe" or "parse"


def _split_comment(line: str) -> tuple[str, str]:
    """``edg x --a 1   # note`` -> (``edg x --a 1``, ``note``); a ``#`` inside quotes is kept."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def commands(path: Path) -> list[Command]:
    """Shell commands in the fenced code blocks of ``path`` (``\\`` continuations joined)."""
    out: list[Command] = []
    lines = path.read_text().splitlines()
    mode, in_block, pending, start = "parse", False, "", 0
    for i, line in enumerate(lines, 1):
        m = MARKER.search(line)
        if m and not in_block:
            mode = " ".join(m.group(1).split())
            continue
        if line.lstrip().startswith("```"):
            if in_block:
                mode = "parse"
            in_block = not in_block
            continue
        if not in_block:
            continue
        body = line.strip()
        if pending:
            body = pending + " " + body
        else:
            start = i
        if body.endswith("\\"):
            pending = body[:-1].rstrip()
            continue
        pending = ""
        text, comment = _split_comment(body)
        if text:
            out.append(Command(f"{path.relative_to(ROOT)}:{start}", text, comment, mode))
    return out


def edg_argv(text: str) -> list[str] | None:
    """The argv of an ``edg`` command (also after ``ray job submit ... --``), or None for other programs."""
    if text.split()[0] not in ("edg", ".venv/bin/edg", "ray"):
        return None
    words = shlex.split(text)
    if words[:3] == ["ray", "job", "submit"] and "--" in words:
        words = words[words.index("--") + 1:]
    if words and words[0] in ("edg", ".venv/bin/edg"):
        return words[1:]
    return None


def _visible_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Option strings (help not suppressed) of the (sub)command that ``argv`` selects, and of its parents."""
    names: set[str] = set()
    p, rest = parser, list(argv)
    while True:
        sub = None
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                sub = a
            elif a.help != argparse.SUPPRESS:
                names.update(a.option_strings)
        if sub is None:
            return names
        while rest and rest[0].startswith("-"):
            rest.pop(0)
        if not rest or rest[0] not in sub.choices:
            return names
        p = sub.choices[rest.pop(0)]


def parse(argv: list[str], where: str) -> argparse.Namespace:
    """Parse with the real parser; a usage error, an abbreviated flag or a hidden (old) flag name becomes a
    test failure naming the document line."""
    from edg.cluster.cli import build_parser
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `edg {' '.join(argv)}` does not parse: {err.getvalue().strip().splitlines()[-1]}")
    known = _visible_options(parser, argv)
    for tok in argv:
        flag = tok.split("=", 1)[0]
        if flag.startswith("--") and len(flag) > 2 and flag not in known:
            pytest.fail(f"{where}: `edg {' '.join(argv)}` uses {flag}, which is an abbreviation or an old "
                        "(hidden) name; use the flag `--help` lists")
    return ns


def all_commands() -> list[Command]:
    return [c for p in DOCS for c in commands(p)]


def _ids(cmds):
    return [c.where for c in cmds]


EDG_DOC_COMMANDS = [c for c in all_commands() if c.mode == "parse" and edg_argv(c.text) is not None]


def test_readme_opens_with_make_demo_and_make_test():
    first = commands(ROOT / "README.md")[:2]
    assert [c.text for c in first] == ["make demo", "make test"]


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for c in all_commands():
        words = c.text.split()
        if words[0] == "make":
            named = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            assert set(named) <= targets, f"{c.where}: `{c.text}` names a target the Makefile lacks"


@pytest.mark.parametrize("cmd", EDG_DOC_COMMANDS, ids=_ids(EDG_DOC_COMMANDS))
def test_documented_edg_commands_parse(cmd):
    parse(edg_argv(cmd.text), cmd.where)


def test_readme_commands_that_are_not_run_say_what_they_cost():
    for c in commands(ROOT / "README.md"):
        if c.mode == "parse" and edg_argv(c.text) is not None:
            assert DURATION.search(c.comment), (f"{c.where}: `{c.text}` is not run by this test, so its comment "
                                                "must give its cost (e.g. `# GPU cluster, ~10 GPU-hours`)")


def help_examples() -> list[tuple[str, list[str]]]:
    """``edg ...`` lines of the ``Example(s)...:`` sections of every command's description and epilog
    (indented lines after the header, up to a blank or unindented line; ``\\`` continuations joined)."""
    from edg.cluster.cli import build_parser
    found = []

    def walk(p: argparse.ArgumentParser, name: str):
        lines = "\n".join(x for x in (p.description, p.epilog) if x).splitlines()
        pending, in_examples = "", False
        for line in lines:
            if line.strip().startswith("Example") and line.rstrip().endswith(":"):
                in_examples = True
                continue
            if not line.strip() or not line[:1].isspace():
                in_examples = False
            if not in_examples:
                continue
            body = (pending + " " + line.strip()) if pending else line.strip()
            if body.endswith("\\"):
                pending = body[:-1].rstrip()
                continue
            pending = ""
            text, _ = _split_comment(body)
            if text.startswith("edg ") and not text.startswith("edg <"):
                found.append((name, text))
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, sp in a.choices.items():
                    walk(sp, f"{name} {sub}")
    walk(build_parser(), "edg")
    return found


def test_help_examples_parse():
    examples = help_examples()
    assert len(examples) >= 10  # every stage command shows at least one example
    for name, text in examples:
        parse(edg_argv(text), f"`{name} --help` example")


def python_blocks() -> list[tuple[str, str]]:
    """(file:line, code) of every ```python block of README.md and docs/*.md."""
    out = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        start = None
        for i, line in enumerate(lines):
            if start is None and line.strip() == "```python":
                start = i + 1
            elif start is not None and line.strip().startswith("```"):
                out.append((f"{path.relative_to(ROOT)}:{start}", "\n".join(lines[start:i])))
                start = None
    return out


@pytest.mark.parametrize("where, code", python_blocks(), ids=[w for w, _ in python_blocks()])
def test_documented_python_parses_and_its_imports_exist(where, code):
    """Python snippets are valid Python and every ``from module import name`` they use exists."""
    import ast
    import importlib
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        pytest.fail(f"{where}: not valid Python ({e})")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(mod, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or ImportError
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


# ---------------------------------------------------------------- executed blocks
def _run(cmd: Command, workdir: Path) -> None:
    """Run one README command in ``workdir`` the way a user would type it (``edg`` in-process)."""
    from edg.cluster.cli import main
    argv = edg_argv(cmd.text)
    if argv is None:
        pytest.fail(f"{cmd.where}: only edg commands may appear in a readme-test: run block, got `{cmd.text}`")
    rc = main(argv)
    assert rc == 0, f"{cmd.where}: `{cmd.text}` exited with {rc}"


def _run_block(mode: str, tmp_path: Path, monkeypatch) -> list[Command]:
    cmds = [c for c in commands(ROOT / "README.md") if c.mode == mode]
    assert cmds, f"README.md has no `<!-- readme-test: {mode} -->` block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDG_RMD17_ROOT", raising=False)  # the README's commands must name their data
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for c in cmds:
        _run(c, tmp_path)
    return cmds


def test_readme_quick_commands_run(tmp_path, monkeypatch, capsys):
    cmds = _run_block("run", tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert len(cmds) >= 3 and "predicted" in out


def test_readme_cpu_recipe_runs_end_to_end(tmp_path, monkeypatch):
    """The stage-by-stage recipe on the embedded data, as written (15 s on a quiet 2-core CPU, in-process)."""
    _run_block("run recipe", tmp_path, monkeypatch)
    assert list(tmp_path.rglob("result.json")) and list(tmp_path.rglob("*.extxyz"))
