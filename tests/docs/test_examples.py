"""Every example in the documentation runs.

Collected from ``README.md`` (when it exists) and ``docs/**/*.md``:

- each fenced ```` ```python ```` block is one test. It runs with ``exec`` in a fresh namespace, inside a fresh
  migrated database of its own (``AUDIT_DATABASE_URL`` points at it, every other ``AUDIT_*`` variable is unset),
  from a temporary working directory; none may opt out. Tracebacks point at the Markdown file and line.
- each ``audit-platform …`` command in a ```` ```bash ```` / ```` ```sh ```` / ```` ```console ```` /
  ```` ```shell ```` block (at the start of a line, after a ``$ `` prompt or a shell operator such as ``&&``, or
  inside ``$(…)``) must name a sub-command of :func:`audit_db_core.cli.build_parser` and be accepted by its argument
  parser (nothing is run).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit_db_core.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PYTHON_LANGS = frozenset({"python"})
SHELL_LANGS = frozenset({"bash", "sh", "shell", "console"})
_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")
_CLOSE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*$")
_SUBSHELL = re.compile(r"\$\(([^()]*)\)")
_SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "(", ")"})


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"] if (ROOT / "README.md").is_file() else []
    docs = ROOT / "docs"
    if docs.is_dir():
        files += sorted(p for p in docs.rglob("*.md") if p.is_file())
    return files


def fenced_blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file (CommonMark fences, up to 3 spaces of indentation)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m or (m["fence"][0] == "`" and "`" in lines[i][m.end("fence") :]):
            i += 1
            continue
        fence, indent, start = m["fence"], len(m["indent"]), i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _CLOSE.match(lines[i])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence):
                break
            line = lines[i]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            i += 1
        i += 1  # past the closing fence (or the end of the file: an unclosed block runs to the end)
        yield Block(path, start + 1, m["info"].lower(), "\n".join(body) + "\n")


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in fenced_blocks(path)]


BLOCKS = all_blocks()


def python_params() -> list[object]:
    params = []
    for block in BLOCKS:
        if block.lang not in PYTHON_LANGS:
            continue
        params.append(pytest.param(block, id=block.id))  # every example runs: none may opt out
    return params


@dataclass(frozen=True)
class Command:
    block: Block
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.block.path.relative_to(ROOT).as_posix()}:{self.line}"


def shell_commands() -> list[Command]:
    """``audit-platform …`` commands of the shell blocks: at the start of a line (after an optional ``$ `` prompt),
    after a shell operator (``&&``, ``;``, ``|``…) or inside ``$(…)``; line continuations are joined."""
    out = []
    for block in BLOCKS:
        if block.lang not in SHELL_LANGS:
            continue
        logical: list[tuple[int, str]] = []
        pending, pending_line = "", 0
        for offset, raw in enumerate(block.text.splitlines()):
            if not pending:
                pending_line = block.line + 1 + offset
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            logical.append((pending_line, pending + raw))
            pending = ""
        if pending:
            logical.append((pending_line, pending))
        for line_no, text in logical:
            stripped = text.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            pieces = [stripped, *(m.group(1) for m in _SUBSHELL.finditer(stripped))]
            for piece in pieces:
                out.extend(Command(block, line_no, cmd) for cmd in _cli_segments(piece))
    return out


def _tokens(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: not something we can check
        return []


def _is_operator(token: str) -> bool:
    return bool(token) and (token in _SHELL_OPERATORS or set(token) <= set(";&|<>()"))


def _cli_segments(command: str) -> list[str]:
    """The simple commands of ``command`` that run ``audit-platform``, as shell-quoted text."""
    found, segment = [], []
    for token in [*_tokens(command), ";"]:
        if _is_operator(token):
            if segment and _is_cli(segment[0]):
                found.append(shlex.join(segment))
            segment = []
        else:
            segment.append(token)
    return found


def _is_cli(token: str) -> bool:
    return token.rsplit("/", 1)[-1] == "audit-platform"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_arguments(command: str) -> list[str]:
    """The arguments after ``audit-platform`` (``command`` is one simple command)."""
    tokens = _tokens(command)
    assert tokens and _is_cli(tokens[0]), f"not an audit-platform command: {command!r}"
    return tokens[1:]


# -- tests ---------------------------------------------------------------------------------------------------------


def test_the_docs_have_examples() -> None:
    assert any(b.lang in PYTHON_LANGS for b in BLOCKS if b.path.is_relative_to(ROOT / "docs")), "no python examples"


@pytest.mark.parametrize("block", python_params())
def test_python_example_runs(
    block: Block, fresh_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AUDIT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUDIT_DATABASE_URL", fresh_database)
    monkeypatch.chdir(tmp_path)
    # Blank lines in front keep the line numbers of the Markdown file, so a traceback shows the failing line.
    source = "\n" * block.line + block.text
    code = compile(source, str(block.path), "exec")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    saved = dict(os.environ)
    try:
        exec(code, namespace)
    finally:  # an example may set AUDIT_* variables: none may leak into the next one
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize("command", [pytest.param(c, id=c.id) for c in shell_commands()])
def test_cli_command_parses(command: Command) -> None:
    args = cli_arguments(command.text)
    parser = build_parser()
    names = subcommands(parser)
    options = [a for a in args if a.startswith("-")]
    positional = [a for a in args if not a.startswith("-")]
    if not positional and options and set(options) <= {"-h", "--help"}:
        return
    assert positional, f"{command.id}: no sub-command in {command.text!r}"
    assert positional[0] in names, f"{command.id}: unknown sub-command {positional[0]!r} (known: {sorted(names)})"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        assert exc.code == 0, f"{command.id}: {command.text!r} is rejected: {stderr.getvalue().strip()}"
