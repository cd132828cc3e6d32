"""Runs the `>>>` examples in pddm_tf's docstrings as doctests, so a stale example fails the tests;
and checks that every reference to docs/METHODS.md ("METHODS.md section N", "eq. (N.k)") resolves.

Every module whose source holds an example is found by reading the files: a new example runs
without being listed here.
"""

import doctest
import importlib
import pathlib
import re

import pytest
from doc_references import REPO, equations, find_references, numbered_sections

import pddm_tf

_PACKAGE = pathlib.Path(pddm_tf.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(_PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


_MODULES = _modules_with_examples()


def test_the_central_apis_have_examples():
    # Guards the discovery: these modules' public APIs carry runnable examples.
    for name in ("pddm_tf.distances", "pddm_tf.layers.pddm", "pddm_tf.losses.pddm", "pddm_tf.miners.mining",
                 "pddm_tf.evaluation.retrieval", "pddm_tf.evaluation.few_shot"):
        assert name in _MODULES


@pytest.mark.parametrize("name", _MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see above)"


# --- References to docs/METHODS.md ----------------------------------------------------------------

_METHODS_PAGE = REPO / "docs" / "METHODS.md"
_METHODS = _METHODS_PAGE.read_text(encoding="utf-8")
_METHODS_SECTIONS = numbered_sections(_METHODS)
_METHODS_EQUATIONS = equations(_METHODS)
_METHODS_REFERENCES = find_references("METHODS.md")


def test_reference_parser_reads_the_forms_the_sources_use(tmp_path):
    # Known answers for every form in use: wrapped lines, comment continuations, lists and ranges,
    # joined string literals, equations and quoted subsection titles.
    source = tmp_path / "sample.py"
    source.write_text('"""Loss (METHODS.md section\n    2) and METHODS.md sections 3, 5 and 7.\n'
                      "# see METHODS.md, section 5, eq. (5.3)\n"
                      "# the METHODS.md sections 2-4 and METHODS.md, eqs. (1.7), (1.8)\n"
                      'x = ("METHODS.md section "\n     "6: text")\n'
                      'y = \'METHODS.md section 2, "Transfer and zero-shot"\'\n')
    found = [(r.line, r.sections, r.equations, r.title) for r in find_references("METHODS.md", [source])]
    assert found == [(1, (2,), (), None), (2, (3, 5, 7), (), None), (3, (5,), ("5.3",), None),
                     (4, (2, 3, 4), (), None), (4, (), ("1.7", "1.8"), None), (5, (6,), (), None),
                     (7, (2,), (), "Transfer and zero-shot")]


def test_methods_page_numbers_its_sections_and_equations():
    assert sorted(_METHODS_SECTIONS) == list(range(1, len(_METHODS_SECTIONS) + 1))
    # Equations (N.k) sit in section N and run 1, 2, ... within it.
    by_section: dict[int, list[int]] = {}
    for label, section in _METHODS_EQUATIONS.items():
        number, index = map(int, label.split("."))
        assert number == section, f"equation ({label}) is in section {section}"
        by_section.setdefault(section, []).append(index)
    for section, indices in by_section.items():
        assert indices == list(range(1, len(indices) + 1)), f"section {section}'s equations are {indices}"
    # The maths the package implements is all there (guards the equation parser).
    assert {"1.6", "2.3", "2.4", "2.5", "3.2", "4.3", "5.1", "5.3", "5.4", "6.1", "8.3", "8.10"} <= set(
        _METHODS_EQUATIONS)


def test_the_package_cites_the_methods_page():
    # Guards the discovery: the package's docstrings cite sections 1-7 some fifty times.
    cited = [r for r in _METHODS_REFERENCES if r.path.startswith("pddm_tf/") and r.sections]
    assert len(cited) >= 40
    assert {s for r in cited for s in r.sections} >= set(range(1, 8))


def test_every_methods_reference_resolves():
    """Every "METHODS.md section N[, eq. (N.k)][, "title"]" in the repository names a section of
    docs/METHODS.md, an equation of that section, and a subsection title found in it."""
    failures = []
    for ref in _METHODS_REFERENCES:
        where = f"{ref.path}:{ref.line}: {ref.text!r}"
        failures += [f"{where}: no section {s}" for s in ref.sections if s not in _METHODS_SECTIONS]
        for label in ref.equations:
            if label not in _METHODS_EQUATIONS:
                failures.append(f"{where}: no equation ({label})")
            elif ref.sections and _METHODS_EQUATIONS[label] not in ref.sections:
                failures.append(f"{where}: equation ({label}) is in section {_METHODS_EQUATIONS[label]}")
        if ref.title and ref.sections and ref.title not in _METHODS_SECTIONS.get(ref.sections[-1], ""):
            failures.append(f"{where}: section {ref.sections[-1]} has no {ref.title!r}")
    assert not failures, "\n".join(failures)


def test_package_references_to_the_methods_page_are_spelled_one_way():
    """In pddm_tf the page is "METHODS.md" (it lives in docs/; never "docs/METHODS.md", nor a bare
    number after it: "METHODS.md section 4", not "METHODS.md 4")."""
    failures = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            if "docs/METHODS.md" in line:
                failures.append(where)
            if re.search(r"METHODS\.md,?\s+\d", line):
                failures.append(where)
    assert not failures, "spell the reference \"METHODS.md section N\":\n" + "\n".join(failures)


def test_measured_figures_on_the_methods_page_are_the_benchmarks():
    """A paragraph (or list item) of docs/METHODS.md that cites "BENCHMARKS.md section N" quotes only
    figures found in that section or the full record it links: the page copies measurements, it does
    not restate them from memory."""
    benchmarks = numbered_sections((REPO / "BENCHMARKS.md").read_text(encoding="utf-8"))

    def record(number: int) -> str:
        section = benchmarks[number]
        linked = re.findall(r"\]\((benchmarks/results/[^)#]+\.md)\)", section)
        return section + "".join((REPO / path).read_text(encoding="utf-8") for path in linked)

    checked, failures = 0, []
    for chunk in re.split(r"\n\s*\n|\n(?=- )", _METHODS):
        cited = [int(n) for n in re.findall(r"BENCHMARKS\.md\s+sections?\s+(\d+)", chunk)]
        cited += [int(n) for n in re.findall(r"BENCHMARKS\.md\s+sections\s+\d+\s+and\s+(\d+)", chunk)]
        if not cited:
            continue
        recorded = "".join(record(n) for n in cited)
        for figure in sorted(set(re.findall(r"(?<![\d.(])\d+\.\d+(?![\d.)])", chunk))):
            checked += 1
            if figure not in recorded:
                failures.append(f"{figure} (cites BENCHMARKS.md section {cited}): {chunk[:70]!r}...")
    assert checked >= 50  # guards the parsing: the page quotes many measured figures
    assert not failures, "\n".join(failures)
