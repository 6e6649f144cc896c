"""Every relative link in README.md and docs/*.md points at a file that exists; a ``#L<n>`` (or ``#L<n>-L<m>``)
anchor at a line that exists, and, when the link text names a function or class (`` `name` `` or
`` `Class.name` ``), at the line that defines it, so links into the code cannot silently drift."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(p for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")] if p.is_file())

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?P<text>(?:[^\[\]]|\[[^\]]*\])*)\]\((?P<target><[^>]+>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^\s*\[(?P<text>[^\]]+)\]:\s*(?P<target>\S+)", re.M)
HTML_SOURCE = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"(?P<target>[^\"]+)\"", re.I)
LINE_ANCHOR = re.compile(r"^L(\d+)(?:-L(\d+))?$")
NAMED = re.compile(r"^`(?:[\w.]+\.)?(\w+)\s*`$")


def links(document: Path) -> list[tuple[str, str]]:
    """(text, target) of the Markdown links, images, reference definitions and HTML src/href of a document,
    outside code blocks and code spans (a code span may be a link's text: `[`q_sample`](...)`)."""
    text = FENCE.sub("", document.read_text(encoding="utf-8"))
    text = INLINE_CODE.sub(lambda span: re.sub(r"[\[\]()<>]", " ", span[0]), text)  # code, not links
    found = [(m["text"], m["target"].strip("<>")) for m in LINK.finditer(text)]
    found += [(m["text"], m["target"]) for m in REFERENCE.finditer(text)]
    found += [("", m["target"]) for m in HTML_SOURCE.finditer(text)]
    return found


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)) or target.startswith("//")


def problems(document: Path) -> list[str]:
    found = []
    for text, target in links(document):
        if is_external(target) or target.startswith("#"):
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / unquote(path_part)).resolve()
        where = f"{document.relative_to(ROOT)}: [{text}]({target})"
        if not path.exists():
            found.append(f"{where}: {path_part} does not exist")
            continue
        match = LINE_ANCHOR.match(anchor)
        if not match:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        first, last = int(match[1]), int(match[2] or match[1])
        if not 1 <= first <= last <= len(lines):
            found.append(f"{where}: {path_part} has {len(lines)} lines")
            continue
        name = NAMED.match(text.strip())
        if name and not re.match(rf"\s*(?:async\s+)?(?:def|class)\s+{name[1]}\b", lines[first - 1]):
            defined = [i + 1 for i, line in enumerate(lines)
                       if re.match(rf"\s*(?:async\s+)?(?:def|class)\s+{name[1]}\b", line)]
            found.append(f"{where}: line {first} does not define {name[1]}"
                         + (f"; it is defined at line {defined[0]}" if defined else ""))
    return found


def test_there_are_documents_to_check():
    assert ROOT / "docs" / "guide.md" in DOCUMENTS


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document):
    assert problems(document) == []


def test_the_checker_catches_broken_links(tmp_path, monkeypatch):
    code = tmp_path / "code.py"
    code.write_text("import os\n\n\ndef q_sample():\n    pass\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](code.py) [ok](code.py#L4) [`q_sample()`](code.py#L4) and `x` [web](https://x.org) [top](#top)\n"
        "![missing](figures/none.png) [past the end](code.py#L9) [`q_sample`](code.py#L1)\n"
        "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n[ref]: gone.md\n"
        '<img src="gone.png">\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert problems(doc) == [
        "doc.md: [missing](figures/none.png): figures/none.png does not exist",
        "doc.md: [past the end](code.py#L9): code.py has 5 lines",
        "doc.md: [`q_sample`](code.py#L1): line 1 does not define q_sample; it is defined at line 4",
        "doc.md: [ref](gone.md): gone.md does not exist",
        "doc.md: [](gone.png): gone.png does not exist",
    ]
