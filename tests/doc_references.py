"""Reading the repository's documents the way a reader follows a reference: the numbered sections and
equations of a Markdown page, and the "PAGE section N" / "eq. (N.k)" references that point into it.

Shared by tests/test_docstrings.py (docs/METHODS.md) and tests/test_benchmarks.py (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]

#: Where references are looked for: the package, tests, benchmarks, examples and the documents.
SOURCE_GLOBS = ("pddm_tf/**/*.py", "tests/**/*.py", "benchmarks/**/*.py", "benchmarks/**/*.sh", "examples/**/*.py",
                "*.md", "docs/*.md", "benchmarks/results/*.md")

# A list of section numbers as prose writes it: "2", "1 and 2", "3, 5, 7", "2-4", "1, 2 (...) and 5".
# A listed number has one or two digits and is not the start of a larger one ("section 1, 1,000
# steps" lists section 1 only).
_ITEM = r"\d{1,2}(?!\d|,\d)(?:\s*-\s*\d{1,2}(?!\d|,\d))?"
_NUMBER_LIST = _ITEM + r"(?:(?:\s*,\s*|\s+and\s+|\s*,\s*and\s+)" + _ITEM + r")*"
_EQUATION_LIST = r"\(\d+\.\d+\)(?:(?:\s*,\s*|\s+and\s+)\(\d+\.\d+\))*"


@dataclasses.dataclass(frozen=True)
class Reference:
    """One reference: the file and line it is on, the text as written, the sections and equations it
    names, and a quoted subsection title ('section 2, "Transfer and zero-shot"') if any."""

    path: str
    line: int
    text: str
    sections: tuple[int, ...]
    equations: tuple[str, ...]
    title: str | None


def _numbers(listed: str) -> tuple[int, ...]:
    numbers: list[int] = []
    for first, last in re.findall(r"(\d+)(?:\s*-\s*(\d+))?", listed):
        numbers.extend(range(int(first), int(last or first) + 1))
    return tuple(numbers)


def _flatten(text: str) -> tuple[str, list[int]]:
    """The text with every line break (and the comment marker or indentation after it) turned into
    one space, so that a reference wrapped over two lines reads as one; and, per character of the
    result, its line number in the original."""
    out, lines, line = [], [], 1
    i = 0
    while i < len(text):
        if text[i] == "\n":
            line += 1
            match = re.compile(r"\n[ \t]*(?:#[ \t]*)?").match(text, i)
            assert match is not None
            i = match.end()
            if out and out[-1] in "\"'" and text[i:i + 1] == out[-1]:
                # Adjacent string literals ("... section " "10 ..."), which Python joins: join them too.
                out.pop()
                lines.pop()
                i += 1
                continue
            out.append(" ")
            lines.append(line)
            continue
        out.append(text[i])
        lines.append(line)
        i += 1
    return "".join(out), lines


def find_references(page: str, files: list[pathlib.Path] | None = None) -> list[Reference]:
    """Every reference to `page` ("METHODS.md", "BENCHMARKS.md") in the repository's sources: "PAGE
    section N", "PAGE, section N", "PAGE sections N, M and K", "PAGE N", each optionally followed by
    ', eq. (N.k)' or ', "Subsection title"'; also a bare "PAGE, eq. (N.k)"."""
    files = files if files is not None else source_files()
    pattern = re.compile(
        re.escape(page)
        + r"`?(?:,?\s+(?:(?:sections?|§)\s+)?(?P<sections>" + _NUMBER_LIST + r")\b)?"
        + r"(?:,?\s*(?:eqs?\.|equations?)\s*(?P<equations>" + _EQUATION_LIST + r"))?"
        + r"(?:,\s*\"(?P<title>[^\"]+)\")?")
    found = []
    for path in files:
        flat, lines = _flatten(path.read_text(encoding="utf-8"))
        for match in pattern.finditer(flat):
            sections = _numbers(match.group("sections") or "")
            equations = tuple(re.findall(r"\((\d+\.\d+)\)", match.group("equations") or ""))
            name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
            found.append(Reference(name, lines[match.start()], match.group(0), sections,
                                   equations, match.group("title")))
    return found


def source_files() -> list[pathlib.Path]:
    """The files `find_references` reads by default (SOURCE_GLOBS), sorted, without duplicates."""
    return sorted({path for pattern in SOURCE_GLOBS for path in REPO.glob(pattern) if path.is_file()})


def numbered_sections(markdown: str) -> dict[int, str]:
    """The page's "## N. Title" sections: number -> the section's text, its heading included."""
    parts = re.split(r"(?m)^(?=## \d+\. )", markdown)
    return {int(re.match(r"## (\d+)\.", part).group(1)): part for part in parts[1:]}  # type: ignore[union-attr]


def equations(markdown: str) -> dict[str, int]:
    """The page's numbered equations: "N.k" -> the section it is in. An equation is a line of a fenced
    block that ends with its number in parentheses, "(N.k)"."""
    found: dict[str, int] = {}
    for number, text in numbered_sections(markdown).items():
        for block in re.findall(r"(?ms)^```[a-z]*\n(.*?)^```", text):
            for label in re.findall(r"(?m)\((\d+\.\d+)\)[ \t]*$", block):
                found[label] = number
    return found
