"""The documentation stands alone: nothing points outside the repository, every relative link resolves, and the
channel table of docs/design.md is the registry's.

A clone has no ``../shared``: the design lives in ``docs/`` (issue 16). Links are checked the way a Markdown
renderer reads them: ``[text](target)``, ``![alt](target)`` and ``[label]: target`` outside code blocks and
inline code; URLs with a scheme and same-page anchors are not files and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from arr_coc_stream.channels import CHANNELS

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = "../" + "shared"  # spelt in two parts so this file does not match itself
# Where a user's clone is read: the README, the docs, the package, the examples and scripts (tests are left out:
# they may name the string they look for).
SCANNED = ("README.md", "CHANGELOG.md", "docs", "arr_coc_stream", "examples", "scripts", "export", "models")
TEXT_SUFFIXES = {".md", ".py", ".sh", ".txt", ".json", ".toml", ".cfg", ".yml", ".yaml", ".html", ".rst"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
            )
    return files


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside code blocks and inline code."""
    found, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = _INLINE_CODE.sub("", line)
        found += [(number, m.group(1)) for m in _INLINE_LINK.finditer(line)]
        ref = _REF_LINK.match(line)
        if ref:
            found.append((number, ref.group(1)))
    return found


def test_links_are_found():
    text = '[a](docs/x.md) ![b](img.png "t") `[c](not/a/link)`\n```\n[d](in/fence)\n```\n[e]: ref/target.md\n'
    assert [t for _, t in _links(text)] == ["docs/x.md", "img.png", "ref/target.md"]


def test_nothing_refers_outside_the_repository():
    offenders = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE in line]
    assert not offenders, f"references to {OUTSIDE} (not in a clone): {offenders}"


def test_design_docs_exist_and_readme_links_them():
    assert (ROOT / "docs" / "design.md").is_file()
    assert "(docs/design.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md: Path):
    broken = []
    for number, target in _links(md.read_text(encoding="utf-8")):
        if _SCHEME.match(target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (md.parent / file_part).resolve()
        if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
            broken.append(f"{md.relative_to(ROOT)}:{number}: {target}")
    assert not broken, f"relative links to no file in the repository: {broken}"


def test_design_channel_table_is_the_registry():
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("## 6. The channel table", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split(" | ")]
        for line in section.splitlines()
        if re.match(r"^\|\s*\d", line)
    ]

    def rng(c):
        return f"[{c.low:g}, {c.high:g}]"

    expected = []
    for c in CHANNELS.values():
        if c.name.startswith("clip_"):
            if c.name != "clip_0":
                continue
            last = CHANNELS["clip_15"]
            expected.append([f"{c.index}-{last.index}", "`clip_0`..`clip_15`", rng(c), ", ".join(c.readers)])
        else:
            expected.append([str(c.index), f"`{c.name}`", rng(c), ", ".join(c.readers)])
    assert [r[:4] for r in rows] == expected
    meanings = {r[1].strip("`"): r[4].replace("\\|", "|") for r in rows}
    for c in CHANNELS.values():
        if not c.name.startswith("clip_"):
            assert meanings[c.name] == c.meaning, c.name
    assert f"{len(CHANNELS)} channels" in text
