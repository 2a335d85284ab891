"""The README's code cannot rot: every ```python block of README.md and docs/*.md runs, and every
``arr-coc-stream`` command they show names a subcommand and options the command line has.

A block that cannot run here (it needs a GPU, TensorRT, a camera, a network stream or server, weights from a hub)
is marked on the line before its fence with ``<!-- skip: REASON -->``; the reason is required, and pytest lists
each skipped block with it (``-rs``). A block that runs but takes long is marked ``<!-- slow: REASON -->`` and
left out by ``scripts/test.sh --fast``.

Each block runs in a process of its own (a block may register a query head or change global state), in a
temporary folder that holds what a reader has beside their code: ``models/`` (copies of the committed model
files) and ``video.mp4``, a stand-in for the reader's own video (a generated clip of a red ball). The processes
are forked from a server that imported arr_coc_stream once (multiprocessing's forkserver): importing torch and the
package costs about 4 s of CPU, paid once instead of once per block, and the server has run no torch operation, so
forking it is safe where forking this test process (its thread pools started by earlier tests) is not.

Command lines are read from ```bash blocks (whole lines, parsed by the real parser, so a subcommand, an option, a
value count or a choice that no longer exists fails) and from inline code that starts with ``arr-coc-stream``
(there only the subcommand and the ``--options`` are checked: inline code may use ``[--opt]`` notation). A
script of the checkout that a shell block runs (``examples/rtsp_demo.py``) must exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import runpy
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from arr_coc_stream import cli, synth

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROG = cli.PROG
BLOCK_TIMEOUT_S = 300  # a block that hangs (a source that never ends) fails instead of stalling CI
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["arr_coc_stream", "arr_coc_stream.synth"])

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>skip|slow)\b:?(?P<reason>.*?)-->\s*$")
_INLINE_CODE = re.compile(r"(`+)(?P<code>.+?)\1")
_OPTION = re.compile(r"^--[a-z][\w-]*")
_SHELL_SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text and the marker before it, if any."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "skip" or "slow"
    reason: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, its indentation (a block inside a list item) removed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        code = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(before)
        blocks.append(
            Block(
                path,
                i + 1,
                opening["lang"].lower(),
                code,
                marker["kind"] if marker else None,
                marker["reason"].strip() if marker else "",
            )
        )
        i = end + 1
    return blocks


ALL_BLOCKS = [b for path in DOCS for b in _blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("python", "py")]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


def _param(block: Block) -> object:
    marks = [pytest.mark.slow] if block.marker == "slow" else []
    return pytest.param(block, id=block.id, marks=marks)


def test_blocks_are_found() -> None:
    assert len(PYTHON_BLOCKS) >= 5, [b.id for b in PYTHON_BLOCKS]
    assert any(f"{PROG} run" in b.code for b in SHELL_BLOCKS)


def test_markers_give_a_reason_and_sit_before_a_block() -> None:
    """A marker without a reason, or one that no fence follows (so it marks nothing), is a mistake."""
    problems = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            marker = _MARKER.match(line)
            if not marker:
                continue
            where = f"{path.relative_to(ROOT)}:{number}"
            if not marker["reason"].strip():
                problems.append(f"{where}: {marker['kind']} marker without a reason")
            following = next((lines[j] for j in range(number, len(lines)) if lines[j].strip()), "")
            if not _FENCE.match(following):
                problems.append(f"{where}: {marker['kind']} marker not followed by a code block")
    assert not problems, problems


def _run_block(script: str, log: str) -> None:
    """Run ``script`` as ``__main__`` in its own folder, its stdout and stderr (a traceback too) into ``log``."""
    with open(log, "wb") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    os.chdir(Path(script).parent)
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")


@pytest.fixture(scope="module")
def reader_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a reader has beside the README's code: the committed models and a video of their own."""
    folder = tmp_path_factory.mktemp("reader")
    (folder / "models").mkdir()
    for model in (ROOT / "models").glob("*.onnx"):
        shutil.copy2(model, folder / "models")
        shutil.copy2(model.with_suffix(".json"), folder / "models")
    synth.write_clip(synth.moving_object("red", n_frames=30), folder / "video.mp4")
    return folder


@pytest.mark.parametrize("block", [_param(b) for b in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, reader_files: Path, tmp_path: Path) -> None:
    if block.marker == "skip":
        pytest.skip(f"{block.id}: {block.reason}")
    # A copy per block: a block may write beside itself (out/, an export into models/)
    work = tmp_path / "work"
    shutil.copytree(reader_files, work)
    script, log = work / "block.py", tmp_path / "output.txt"
    script.write_text(block.code, encoding="utf-8")
    log.touch()  # there even when the process dies before it runs the block
    process = _FORKSERVER.Process(target=_run_block, args=(str(script), str(log)))
    process.start()
    process.join(BLOCK_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail(f"{block.id} still running after {BLOCK_TIMEOUT_S} s:\n{block.code}")
    assert process.exitcode == 0, (
        f"{block.id} failed (exit {process.exitcode}):\n{block.code}\n--- output\n"
        f"{log.read_text(encoding='utf-8', errors='replace')[-6000:]}"
    )


def _command_lines(code: str) -> list[list[str]]:
    """The argument lists of every ``arr-coc-stream`` command in a shell block (after the program name)."""
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token not in _SHELL_SEPARATORS:
                segment.append(token)
                continue
            if segment and Path(segment[0]).name == PROG:
                found.append(segment[1:])
            segment = []
    return found


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def _check_options(args: list[str], where: str) -> list[str]:
    """Problems with the subcommand and the exact ``--option`` names of one command (no abbreviations)."""
    subparsers = _subparsers()
    top = _options(cli.build_parser())
    if not args or args[0] in top:
        return []  # the program named on its own, --version, --help
    if args[0] not in subparsers:
        return [f"{where}: {PROG} {args[0]}: no such subcommand (have {sorted(subparsers)})"]
    known = _options(subparsers[args[0]])
    return [
        f"{where}: {PROG} {args[0]} has no option {option}"
        for option in (_OPTION.match(a)[0] for a in args[1:] if _OPTION.match(a))
        if option not in known
    ]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in SHELL_BLOCKS if PROG in b.code])
def test_shell_commands_parse(block: Block) -> None:
    """Each command line parses with the real parser: subcommand, options, their values and choices."""
    problems = []
    for args in _command_lines(block.code):
        where = f"{block.id}: {PROG} {shlex.join(args)}"
        problems += _check_options(args, where)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                cli.build_parser().parse_args(args)
            except SystemExit as exc:
                if exc.code != 0:  # 0: --version or --help, which print and exit
                    problems.append(f"{where}: {err.getvalue().strip().splitlines()[-1]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in SHELL_BLOCKS])
def test_shell_scripts_exist(block: Block) -> None:
    """A script of the checkout that a shell block runs (``python examples/rtsp_demo.py``) is there."""
    scripts = {
        token
        for line in block.code.replace("\\\n", " ").splitlines()
        for token in shlex.split(line, comments=True)
        if token.endswith((".py", ".sh")) and not token.startswith(("/", "~", "$"))
    }
    assert not [s for s in sorted(scripts) if not (ROOT / s).is_file()], sorted(scripts)


def _inline_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(where, arguments) of inline code that starts with ``arr-coc-stream``, outside fenced blocks."""
    found, fence = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = _FENCE.match(line)
        if opening and (fence is None or line.strip().startswith(fence)):
            fence = opening["fence"] if fence is None else None
            continue
        if fence is not None:
            continue
        for match in _INLINE_CODE.finditer(line):
            words = match["code"].split()
            if words and Path(words[0]).name == PROG:
                found.append((f"{path.relative_to(ROOT)}:{number}: `{match['code']}`", words[1:]))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_inline_commands_exist(path: Path) -> None:
    problems = []
    for where, args in _inline_commands(path):
        problems += _check_options(args, where)
    assert not problems, "\n".join(problems)


def test_option_check_catches_mistakes() -> None:
    assert _check_options(["run", "VIDEO", "--jsonl", "x"], "ok") == []
    assert _check_options(["--version"], "ok") == _check_options([], "ok") == []
    assert _check_options(["runn"], "x") and _check_options(["run", "--no-such-option"], "x")
    assert _command_lines('bash scripts/setup.sh && .venv/bin/arr-coc-stream run --k 5  # "c"\n') == [
        ["run", "--k", "5"]
    ]


def test_blocks_and_markers_are_read(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "text\n\n<!-- skip: needs a GPU -->\n```python\nimport torch\n```\n\n- item\n\n  ```bash\n  ls\n  ```\n",
        encoding="utf-8",
    )
    gpu, listed = _blocks(md)
    assert (gpu.line, gpu.lang, gpu.code, gpu.marker, gpu.reason) == (
        4,
        "python",
        "import torch\n",
        "skip",
        "needs a GPU",
    )
    assert (listed.line, listed.lang, listed.code, listed.marker) == (10, "bash", "ls\n", None)
