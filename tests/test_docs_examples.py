"""Every example in README.md and docs/*.md runs as written.

The blocks are found with a CommonMark parser (markdown-it-py), so what is checked is what
a reader sees. Every code block must be fenced with an info string; its first word says
how it is checked, further words are options:

``python``
    Run as a script (``python3 block.py``) in a fresh empty working directory, with HOME a
    fresh directory (so the default data directory, ``~/.local/share/metafs``, starts
    empty) and no METAFS_* variables.
``python test_NAME.py``
    A test module: saved as ``test_NAME.py`` and run with ``python3 -m pytest``, as the
    text around it says.
``bash`` / ``sh``
    Every command line that runs ``metafs`` is parsed by the real argument parser
    (:func:`metafs.cli.build_parser`), so an unknown command or flag fails; the block is
    checked by ``bash -n``; then it runs as one script (``bash -euo pipefail``) in a fresh
    working directory, HOME as above, with ``metafs`` and ``python`` on PATH, the
    reader's files (:data:`USER_FILES`) and volume (:data:`VOLUME`) in place. Blocks that mount need
    FUSE (root and /dev/fuse) and are skipped without it; whatever they leave mounted is
    unmounted afterwards.
``bash parse-only`` / ``sh parse-only``
    Parsed and syntax-checked as above but not run: the commands need several machines
    (a team's namenodes, Docker Compose, a metrics endpoint), stay in the foreground, or
    are alternatives to one another.
``console``
    A terminal transcript: each ``$ `` line is parsed as above and run in one shell; the
    lines after it are its expected output (stdout and stderr), where ``...`` stands for
    any text. Same environment as shell blocks.
``toml``
    Loaded as a config file through :func:`metafs.config.load` (which refuses unknown
    settings).
``toml auth_file``
    Loaded as an identity table through ``IdentityTable.load``.
``text`` / ``mermaid``
    Illustrations (sample output, pseudo-code, diagrams): not run.

Paths a reader's machine has but a test must not touch are replaced before a block runs,
only these, in the text of bash/sh blocks: see :data:`SUBSTITUTIONS`.

A failing block fails its test with the file, the line of its fence and the output.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from fuse_fixtures import FUSE_AVAILABLE

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN_LANGS = {"python", "bash", "sh", "console", "toml"}
ILLUSTRATIVE_LANGS = {"text", "mermaid"}
OPTIONS = {"bash": {"parse-only"}, "sh": {"parse-only"}, "toml": {"auth_file"}}

#: absolute paths in shell examples, replaced by directories under the test's temporary
#: directory (``{tmp}``) so that a run touches nothing outside it
SUBSTITUTIONS = {
    "/mnt/metafs": "{tmp}/mnt/metafs",
    "/etc/metafs": "{tmp}/etc/metafs",
}

#: what a reader has before following the examples: files in HOME and in the working
#: directory that the examples copy, sync or run
USER_FILES = {
    "home": {"datasets/coco/000001.jpg": b"\xff\xd8\xff\xe0" + bytes(4000)},
    "work": {"images/cat.jpg": b"\xff\xd8\xff\xe0" + bytes(3000),
             "images/dog.jpg": b"\xff\xd8\xff\xe0" + bytes(5000),
             "run42/model.pt": bytes(100_000),
             "train.py": b"import sys\nprint('training on', *sys.argv[1:])\n"},
}

#: the reader's volume (the embedded default data directory in HOME), made before each
#: shell and console block runs: a file system the commands can act on
VOLUME = {"/datasets/coco/000001.jpg": USER_FILES["home"]["datasets/coco/000001.jpg"],
          "/models/resnet.pt": bytes(200_000)}

BLOCK_TIMEOUT = 180  # seconds for one block


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    kind: str  # "fence" or "code_block" (indented)
    lang: str
    options: tuple[str, ...]
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks() -> list[Block]:
    md = MarkdownIt("commonmark")
    found = []
    for path in DOC_FILES:
        for tok in md.parse(path.read_text()):
            if tok.type not in ("fence", "code_block"):
                continue
            words = tok.info.split()
            found.append(Block(path, tok.map[0] + 1, tok.type, words[0] if words else "",
                               tuple(words[1:]), tok.content))
    return found


BLOCKS = _blocks()


def _of(*langs: str) -> list[pytest.param]:
    return [pytest.param(b, id=b.where) for b in BLOCKS if b.lang in langs]


def _fail(block: Block, what: str, output: str = "") -> None:
    pytest.fail(f"{block.where}: {block.lang} block {what}\n--- block ---\n{block.text}"
                + (f"--- output ---\n{output}" if output else ""), pytrace=False)


# -- the environment a block runs in ------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> dict:
    """A fresh working directory, HOME and environment, with ``metafs`` on PATH."""
    home, work, bindir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    for d in (home, work, bindir):
        d.mkdir()
    for where, files in USER_FILES.items():
        for name, data in files.items():
            (tmp_path / where / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / where / name).write_bytes(data)
    # the installed command and python, as a user has them, running this tree's code
    python = shlex.quote(sys.executable)
    for name, cmd in (("metafs", f"{python} -m metafs.cli"), ("python", python)):
        (bindir / name).write_text(f"#!/bin/sh\nexec {cmd} \"$@\"\n")
        (bindir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("METAFS_", "XDG_", "PYTEST_"))}
    env.update(HOME=str(home), PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return {"tmp": tmp_path, "home": home, "work": work, "env": env}


def make_volume(sandbox: dict) -> None:
    """Make the reader's volume (:data:`VOLUME`) in the sandbox's default data directory."""
    from metafs import Client

    with Client(data_dir=str(sandbox["home"] / ".local/share/metafs")) as fs:
        for path, data in VOLUME.items():
            fs.makedirs(os.path.dirname(path), exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(data)


def _run(block: Block, argv: list[str], sandbox: dict) -> tuple[int, str]:
    """Run in the sandbox, in a process group of its own: what a block leaves running in
    the background (``cmd &``) is stopped when it ends. Output goes to a file, so that a
    background command holding it open does not keep the block running."""
    log = sandbox["tmp"] / "output.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=sandbox["work"], env=sandbox["env"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _fail(block, f"did not finish in {BLOCK_TIMEOUT} s", log.read_text())
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return proc.returncode, log.read_text()


def _unmount_under(root: Path) -> None:
    real = os.path.realpath(root)
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    for p in reversed(points):
        if p == real or p.startswith(real + "/"):
            subprocess.run(["fusermount3", "-uz", p], capture_output=True, timeout=30)


# -- shell commands -------------------------------------------------------------------------


def shell_commands(text: str) -> list[str]:
    """The command lines of a shell block: continuations joined, comments and blanks dropped."""
    lines, cur = [], ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        if cur.strip() and not cur.lstrip().startswith("#"):
            lines.append(cur.strip())
        cur = ""
    return lines


def metafs_invocations(command: str) -> list[list[str]]:
    """Each ``metafs`` call in a command line, as its argument list (after ``metafs``)."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    words = list(lex)
    calls, i = [], 0
    while i < len(words):
        if words[i] == "metafs":
            j = i + 1
            while j < len(words) and not set(words[j]) <= set(";&|()<>"):
                j += 1
            calls.append(words[i + 1:j])
            i = j
        i += 1
    return calls


def check_cli(block: Block, commands: list[str]) -> int:
    """Parse every ``metafs`` call of a block with the real parser; returns how many."""
    from metafs.cli import build_parser

    n = 0
    for cmd in commands:
        for argv in metafs_invocations(cmd):
            n += 1
            try:
                build_parser().parse_args(argv)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    _fail(block, f"has a command the metafs parser refuses: {cmd!r}")
    return n


def _substitute(text: str, tmp: Path) -> str:
    for old, new in SUBSTITUTIONS.items():
        text = re.sub(re.escape(old) + r"(?=[/\s'\"]|$)", new.format(tmp=tmp), text,
                      flags=re.M)
    return text


# -- the tests ------------------------------------------------------------------------------


def test_every_block_is_fenced_and_labelled() -> None:
    """Indented blocks and unknown info strings would escape the checks below."""
    bad = []
    for b in BLOCKS:
        if b.kind == "code_block":
            bad.append(f"{b.where}: indented code block (fence it with an info string)")
        elif b.lang not in RUN_LANGS | ILLUSTRATIVE_LANGS:
            bad.append(f"{b.where}: info string {b.lang!r} is none of "
                       f"{sorted(RUN_LANGS | ILLUSTRATIVE_LANGS)}")
        elif set(b.options) - OPTIONS.get(b.lang, set()) and not (
                b.lang == "python" and len(b.options) == 1
                and re.fullmatch(r"test_\w+\.py", b.options[0])):
            bad.append(f"{b.where}: unknown options {b.options} for {b.lang}")
    assert not bad, "\n".join(bad)
    assert any(b.lang in RUN_LANGS for b in BLOCKS)


@pytest.mark.parametrize("block", _of("python"))
def test_python_block(block: Block, sandbox: dict) -> None:
    if block.options:
        name = block.options[0]
        (sandbox["work"] / name).write_text(block.text)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
    else:
        (sandbox["work"] / "example.py").write_text(block.text)
        argv = [sys.executable, "example.py"]
    code, out = _run(block, argv, sandbox)
    if code != 0:
        _fail(block, f"failed (exit {code})", out)


@pytest.mark.parametrize("block", _of("bash", "sh"))
def test_shell_block(block: Block, sandbox: dict) -> None:
    commands = shell_commands(block.text)
    check_cli(block, commands)
    syntax = subprocess.run(["bash", "-n"], input=block.text, text=True, capture_output=True)
    if syntax.returncode != 0:
        _fail(block, "is not valid shell", syntax.stderr)
    if "parse-only" in block.options:
        return
    mounts = any(argv[:1] == ["mount"] for c in commands for argv in metafs_invocations(c))
    if mounts and not FUSE_AVAILABLE:
        pytest.skip("mounts: needs /dev/fuse, root and fusermount3")
    make_volume(sandbox)
    script = sandbox["tmp"] / "block.sh"
    script.write_text(_substitute(block.text, sandbox["tmp"]))
    try:
        code, out = _run(block, ["bash", "-euo", "pipefail", str(script)], sandbox)
    finally:
        _unmount_under(sandbox["tmp"])
    if code != 0:
        _fail(block, f"failed (exit {code})", out)


def _transcript(text: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"output before the first '$ ' command: {line!r}")
    return steps


def _matches(expected: list[str], got: str) -> bool:
    pattern = "\n".join(".*".join(re.escape(part) for part in line.rstrip().split("..."))
                        for line in expected).rstrip("\n")
    got = "\n".join(line.rstrip() for line in got.splitlines()).rstrip("\n")
    return re.fullmatch(pattern, got, flags=re.S) is not None


@pytest.mark.parametrize("block", _of("console"))
def test_console_block(block: Block, sandbox: dict) -> None:
    steps = _transcript(block.text)
    assert steps, f"{block.where}: console block without a '$ ' command"
    check_cli(block, [cmd for cmd, _ in steps])
    make_volume(sandbox)
    for cmd, expected in steps:
        code, out = _run(block, ["bash", "-c", cmd], sandbox)
        if not _matches(expected, out):
            _fail(block, f"printed something else for {cmd!r} (exit {code})", out)


@pytest.mark.parametrize("block", _of("toml"))
def test_toml_block(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(block.text)
    path.chmod(0o600)  # as `metafs token` and `metafs auth init` write an identity table
    try:
        if "auth_file" in block.options:
            from metafs.ops.auth import IdentityTable

            IdentityTable.load(path)
        else:
            from metafs.config import load

            load(str(path), environ={})
    except Exception as exc:  # noqa: BLE001 - any failure to load is the block's failure
        _fail(block, f"does not load: {type(exc).__name__}: {exc}")


def test_config_loader_refuses_unknown_settings(tmp_path: Path) -> None:
    """What makes the toml check above worth anything."""
    from metafs.config import load

    path = tmp_path / "bad.toml"
    path.write_text('db_url = "sqlite:///x.db"\nblock_sise = 4096\n')
    with pytest.raises(ValueError, match="unknown setting 'block_sise'"):
        load(str(path), environ={})


def test_cli_check_refuses_unknown_commands_and_flags() -> None:
    """What makes the parse check of shell blocks worth anything."""
    block = Block(ROOT / "README.md", 1, "fence", "bash", (), "")
    for bad in ("metafs mount /mnt/x --no-such-flag", "ls && metafs frobnicate /x",
                "metafs gc [--dry-run]"):
        with pytest.raises(pytest.fail.Exception):
            check_cli(block, [bad])
    assert check_cli(block, ["docker compose run --rm cli metafs status | jq ."]) == 1

