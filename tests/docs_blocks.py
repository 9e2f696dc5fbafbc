"""The fenced code blocks of README.md and docs/*.md, for the tests that run them.

Every block is either run by a test, which takes it with :func:`code_block`
(``tests/test_docs_samples.py`` finds those calls in the tests' source and fails
for a block no test takes), or is an excerpt of a file in the repository, said
visibly on the line before it: ``From `examples/chat/app.py`:``. An excerpt is
checked line by line against that file, which its own tests run.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^( *)```(\S*)\n(.*?)^\1```", re.M | re.S)
#: The lead-in of an excerpt: "From `path`:" on the line before the block.
_EXCERPT = re.compile(r"^From `([^`]+)`(?: \([^)]*\))?:$")


@dataclass(frozen=True)
class Block:
    page: str  # "README.md" or a file name in docs/
    line: int  # of the opening fence
    language: str
    text: str
    lead: str  # the last non-blank line before the fence

    @property
    def excerpt_of(self) -> Path | None:
        """The file this block says it is an excerpt of, if it says so."""
        found = _EXCERPT.match(self.lead)
        return ROOT / found.group(1) if found else None

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.language or 'no language'})"


def page_path(page: str) -> Path:
    return ROOT / page if page == "README.md" else DOCS / page


def pages() -> list[str]:
    return ["README.md", *sorted(path.name for path in DOCS.glob("*.md"))]


def blocks(page: str) -> list[Block]:
    text = page_path(page).read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                language=match.group(2),
                text=textwrap.dedent(match.group(3)),
                lead=before[-1].strip() if before else "",
            )
        )
    return found


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]


def find_blocks(page: str, language: str, containing: str) -> list[Block]:
    return [
        block
        for block in blocks(page)
        if block.language == language and containing in block.text
    ]


def code_block(page: str, language: str, containing: str) -> str:
    """The one fenced *language* block of ``docs/<page>`` (or of ``README.md``)
    that holds *containing*.

    Call it with literal strings: the coverage test reads the calls from the
    tests' source to know which blocks are run.
    """
    found = find_blocks(page, language, containing)
    assert len(found) == 1, (
        f"{page}: {len(found)} {language} blocks hold {containing!r}"
    )
    return found[0].text


def excerpt_mismatch(block: Block, source: str) -> str | None:
    """Why *block* is not an excerpt of *source*, or None if it is.

    Each line of the block, stripped, must match a later line of the source, in
    order; ``...`` in a block line stands for anything, and a line that starts
    with ``...`` stands for lines left out. End-of-line comments (after two
    spaces) are the page's own, and type annotations of a ``def`` line may be
    left out (the examples have them for mypy, the docs not).
    """
    lines = [_unannotated(_code(line)) for line in source.splitlines()]
    position = 0
    for wanted in (_code(line) for line in block.text.splitlines()):
        if not wanted or wanted.startswith("..."):
            continue
        pattern = re.compile(".*".join(map(re.escape, wanted.split("..."))))
        for index in range(position, len(lines)):
            if pattern.fullmatch(lines[index]):
                position = index + 1
                break
        else:
            return f"{wanted!r} is not in the file (after line {position})"
    return None


def _unannotated(line: str) -> str:
    """*line* without annotations if it is a ``def`` line: ``def f(a: int) -> str:``
    becomes ``def f(a):``."""
    if not re.match(r"(async )?def \w+\(", line):
        return line
    line = re.sub(r"\)\s*->.*:$", "):", line)
    return re.sub(r"(\w+): [^,()=]+", r"\1", line)


def _code(line: str) -> str:
    """*line* stripped, without an end-of-line ``#`` or ``//`` comment."""
    return re.sub(r"\s{2,}(#|//) .*$", "", line).strip()
