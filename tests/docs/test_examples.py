"""Every example in the documentation runs, as a reader follows it.

Collected from ``README.md`` (when it exists) and ``docs/**/*.md``. Each page is one test: its blocks run in the
order of the page, in one database and one working directory, the way a reader works through it.

- ```` ```python ```` blocks run with ``exec`` in one namespace per page (a later block sees the names of an
  earlier one); none may opt out. Tracebacks point at the Markdown file and line.
- ```` ```bash ```` / ```` ```sh ```` / ```` ```shell ```` / ```` ```console ```` blocks run for real, with ``bash``
  under ``set -eo pipefail`` (of a ``console`` transcript, the ``$ `` lines): every command must succeed. Variables a block exports reach the blocks after it (shell
  and python), as in the reader's shell. A shell block preceded by ``<!-- not-run: <reason> -->`` is not run: for
  commands that start long-running things (``audit-platform dev``), need root or the network (``pip install``,
  ``docker compose``), or take far too long here (the whole test suite, a full benchmark); the reason is required.
  Output is shown in ```` ```text ```` blocks, which never run.
- The page starts with a fresh migrated database of its own: ``AUDIT_DATABASE_URL`` points at it and every other
  ``AUDIT_*`` variable is unset. The working directory is a temporary one holding ``.venv`` (a link to the
  interpreter's environment, so ``.venv/bin/audit-platform`` works as in a checkout), and the environment's ``bin``
  comes first on ``PATH``. Local servers a page starts (``audit-platform local up``) are stopped afterwards.
- Every ``audit-platform …`` command of a shell block — run or not — must name a sub-command of
  :func:`audit_db_core.cli.build_parser` and be accepted by its argument parser (a separate, fast test).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit_db_core.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PYTHON_LANGS = frozenset({"python"})
SHELL_LANGS = frozenset({"bash", "sh", "shell", "console"})
#: The marker of a shell block that is not run, on the last non-blank line before its fence.
NOT_RUN = re.compile(r"^\s*<!--\s*not-run(?::\s*(?P<reason>.*?))?\s*-->\s*$")
#: Pages whose shell blocks start local servers of their own: heavier than the rest.
_STARTS_SERVERS = re.compile(r"audit-platform\s+local\s+up\b")
_SHELL_TIMEOUT = 240  # seconds for one shell block
#: After each complete command line: errexit spares a failure that is not the last command of an ``a && b`` list.
_CHECK = '__rc=$?; [ "$__rc" -eq 0 ] || exit "$__rc"'
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
    marker: str | None = None  # the not-run marker line before the fence, if any

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"

    @property
    def not_run_reason(self) -> str | None:
        """Why this block is not run ('' when the marker gives no reason); None when it runs."""
        if self.marker is None:
            return None
        m = NOT_RUN.match(self.marker)
        return (m["reason"] or "") if m else None


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"] if (ROOT / "README.md").is_file() else []
    docs = ROOT / "docs"
    if docs.is_dir():
        files += sorted(p for p in docs.rglob("*.md") if p.is_file())
    return files


def fenced_blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file (CommonMark fences, up to 3 spaces of indentation)."""
    return fenced_blocks_of(path, path.read_text(encoding="utf-8"))


def fenced_blocks_of(path: Path, text: str) -> Iterator[Block]:
    """The fenced code blocks of Markdown ``text``, found in ``path``."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m or (m["fence"][0] == "`" and "`" in lines[i][m.end("fence") :]):
            i += 1
            continue
        fence, indent, start = m["fence"], len(m["indent"]), i
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
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
        marker = before if NOT_RUN.match(before) else None
        yield Block(path, start + 1, m["info"].lower(), "\n".join(body) + "\n", marker)


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in fenced_blocks(path)]


BLOCKS = all_blocks()


def runnable(block: Block) -> bool:
    return block.lang in PYTHON_LANGS or (block.lang in SHELL_LANGS and block.marker is None)


def page_params() -> list[object]:
    """One test per page with something to run; pages that start local servers are marked slow."""
    params = []
    for path in doc_files():
        blocks = [b for b in BLOCKS if b.path == path and runnable(b)]
        if not blocks:
            continue
        heavy = any(b.lang in SHELL_LANGS and _STARTS_SERVERS.search(b.text) for b in blocks)
        marks = [pytest.mark.slow, pytest.mark.local_servers] if heavy else []
        params.append(pytest.param(path, blocks, id=path.relative_to(ROOT).as_posix(), marks=marks))
    return params


# -- running a page ------------------------------------------------------------------------------------------------


class Reader:
    """Works through one page: a namespace for its python blocks, a shell environment for its shell blocks, one
    working directory for both."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        # Where a shell block leaves its environment for the next: outside the directory the reader works in.
        self._env_out = workdir.parent / f".{workdir.name}-shell-env"
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUDIT_")}
        env["AUDIT_DATABASE_URL"] = database_url
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.shell_env = env
        self._applied: dict[str, str] = dict(env)  # what python blocks have been given of the shell's environment
        self.namespace: dict[str, object] = {"__name__": "__main__", "__builtins__": builtins}
        # `.venv/bin/audit-platform`, `.venv/bin/python` as in a checkout
        (workdir / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)

    def run(self, block: Block) -> None:
        if block.lang in PYTHON_LANGS:
            self.run_python(block)
        else:
            self.run_shell(block)

    def run_python(self, block: Block) -> None:
        # What the shell exported since the last python block reaches python too; what python set stays set.
        for name in set(self._applied) - set(self.shell_env):
            os.environ.pop(name, None)
        os.environ.update({k: v for k, v in self.shell_env.items() if self._applied.get(k) != v})
        self._applied = dict(self.shell_env)
        # Blank lines in front keep the line numbers of the Markdown file, so a traceback shows the failing line.
        code = compile("\n" * block.line + block.text, str(block.path), "exec")
        exec(code, self.namespace)

    def run_shell(self, block: Block) -> None:
        env_out = self._env_out
        text = block.text
        if block.lang == "console":  # a transcript: the `$ ` lines are the commands, the rest is their output
            text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
        script = f"set -eo pipefail\n{strict(text)}\nenv -0 > {shlex.quote(str(env_out))}\n"
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.workdir, env=self.shell_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=_SHELL_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the block's whole process group, nothing else
            out, err = proc.communicate()
            pytest.fail(f"{block.id}: shell block still running after {_SHELL_TIMEOUT} s\n{_tail(out, err)}")
        if proc.returncode != 0:
            pytest.fail(f"{block.id}: shell block failed (exit {proc.returncode})\n{block.text}\n{_tail(out, err)}")
        pairs = (item.split("=", 1) for item in env_out.read_text().split("\0") if "=" in item)
        self.shell_env = {k: v for k, v in pairs if k not in {"PWD", "OLDPWD", "SHLVL", "_"}}
        env_out.unlink()

    def stop_local_servers(self) -> None:
        """Servers a page started with ``audit-platform local up`` (in the default directory) are stopped."""
        directory = self.workdir / ".audit-platform"
        if directory.exists():
            subprocess.run([str(Path(sys.executable).parent / "audit-platform"), "local", "down", "--remove", "--dir",
                            str(directory)], cwd=self.workdir, env=self.shell_env, capture_output=True, timeout=120)


def strict(script: str) -> str:
    """``script`` with the exit status checked after every line that ends a complete command (``bash -n`` accepts
    the script up to it), so a failure inside an ``a && b`` list fails the block as it would fail a reader, while
    ``a || b`` keeps its meaning. Lines inside ``if`` / ``for`` / continuations are left alone."""
    out: list[str] = []
    for line in script.splitlines():
        out.append(line)
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith("\\") or "<<" in line:
            continue
        if subprocess.run(["bash", "-n", "-c", "\n".join(out)], capture_output=True).returncode == 0:
            out.append(_CHECK)
    return "\n".join(out)


def _tail(out: str, err: str, limit: int = 4000) -> str:
    return f"--- stdout ---\n{out[-limit:]}\n--- stderr ---\n{err[-limit:]}"


@contextlib.contextmanager
def reading(workdir: Path, database_url: str) -> Iterator[Reader]:
    """A :class:`Reader` in ``workdir``; the process's environment and working directory are restored after."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    reader = Reader(workdir, database_url)
    os.environ.clear()
    os.environ.update(reader.shell_env)
    os.chdir(workdir)
    try:
        yield reader
    finally:
        try:
            reader.stop_local_servers()
        finally:  # a page may set AUDIT_* variables: none may leak into the next one
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)


# -- the shell commands of the docs --------------------------------------------------------------------------------


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
    in_docs = [b for b in BLOCKS if b.path.is_relative_to(ROOT / "docs")]
    assert any(b.lang in PYTHON_LANGS for b in in_docs), "no python examples"
    assert any(b.lang in SHELL_LANGS and runnable(b) for b in in_docs), "no shell examples that run"


def test_not_run_markers_are_explained_and_only_on_shell_blocks() -> None:
    """A marker says why (a reader should know what they would see elsewhere), and python blocks always run."""
    for block in BLOCKS:
        if block.marker is None:
            continue
        assert block.lang in SHELL_LANGS, f"{block.id}: only shell blocks may be marked not-run ({block.lang})"
        assert block.not_run_reason, f"{block.id}: give the reason: <!-- not-run: why it does not run here -->"


def test_a_failing_shell_block_fails_the_page(tmp_path: Path) -> None:
    """The runner is not lenient: a failing command in the middle of a block fails it, with the page's line."""
    page = ROOT / "docs" / "page.md"  # not written: only its path names the block
    reader = Reader(tmp_path, "postgresql://unused")
    for body in ("false\ntrue", "false && true\ntrue", "true | false | true\ntrue", "true \\\n  && false\ntrue",
                 "for i in 1; do\n  false && true\ndone\ntrue"):
        (block,) = fenced_blocks_of(page, f"text\n\n```bash\n{body}\n```\n")
        with pytest.raises(pytest.fail.Exception, match=r"docs/page.md:3: shell block failed \(exit 1\)"):
            reader.run_shell(block)
    (block,) = fenced_blocks_of(page, "```bash\nfalse || true\nexport AUDIT_X=1\n```\n")
    reader.run_shell(block)
    assert reader.shell_env["AUDIT_X"] == "1"  # what a block exports, the next one sees
    (block,) = fenced_blocks_of(page, "```console\n$ export AUDIT_Y=$AUDIT_X\nsome output\n```\n")
    reader.run_shell(block)  # a transcript: only the `$ ` lines run
    assert reader.shell_env["AUDIT_Y"] == "1"


@pytest.mark.parametrize(("page", "blocks"), page_params())
def test_page_runs_in_order(page: Path, blocks: list[Block], fresh_database: str, tmp_path: Path) -> None:
    workdir = tmp_path / "reader"
    workdir.mkdir()
    with reading(workdir, fresh_database) as reader:
        for block in blocks:
            reader.run(block)


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
