"""Every public function and class of ``vlm_helpers`` names where the series teaches it, and the pointer is right.

A reference is written in a docstring as::

    ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see"

(the notebook's path in double backticks, then the heading text exactly as the notebook's markdown has it,
without the leading #'s), or, for code no notebook teaches (the command line, distributed launch)::

    README, section "Scaling out: from one GPU to several machines"

Docstrings wrap, so whitespace is normalised before a reference is read. The package is read with ``ast``:
nothing is imported, so a test here cannot pass or fail because of what an import does.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vlm_helpers"

# ``notebooks/NN_name.ipynb``, section "Heading". A heading may itself hold double quotes (notebook 02 has
# 'The metric: ANLS, not "Levenshtein similarity"'), so the section ends at the first quote that is followed by
# punctuation, a space or the end of the text, not at the first quote.
_SECTION = r'section "(?P<section>.+?)"(?=[.,;:)]|\s|$)'
NOTEBOOK_REFERENCE = re.compile(r"``(?P<notebook>notebooks/[^`\s]+)``, " + _SECTION)
README_REFERENCE = re.compile(r"\bREADME, " + _SECTION)
NOTEBOOK_MENTION = re.compile(r"notebooks/[\w.-]+\.ipynb")
HEADING = re.compile(r"#{1,6}\s+(.+?)(?:\s+#+)?\s*")  # an optional closing run of #'s is not part of the text


def normalise(text: str) -> str:
    """One space for every run of whitespace, so a reference wrapped over two docstring lines reads as one."""
    return " ".join(text.split())


def markdown_headings(markdown: str) -> list[str]:
    """The ATX headings (``#`` .. ``######``) of a markdown text, without the #'s; fenced code is skipped."""
    headings, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := HEADING.fullmatch(line)):
            headings.append(normalise(match.group(1)))
    return headings


def notebook_headings(path: Path) -> list[str]:
    """The headings of a notebook's markdown cells (code cells' ``# comments`` are not headings)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [heading for cell in cells if cell["cell_type"] == "markdown"
            for heading in markdown_headings("".join(cell["source"]))]


def references(text: str) -> list[tuple[str, str]]:
    """Every reference in ``text``: ``(notebook path, section)``, or ``("README", section)``."""
    text = normalise(text)
    found = [(m["notebook"], m["section"]) for m in NOTEBOOK_REFERENCE.finditer(text)]
    return found + [("README", m["section"]) for m in README_REFERENCE.finditer(text)]


def reference_problems(text: str, root: Path = ROOT) -> list[str]:
    """What is wrong with the references in ``text``, read against the notebooks and README under ``root``.

    A reference must name an existing notebook (or the README) and one of its headings. A ``section "..."``
    that is not part of a reference in the convention is reported too (a pointer no test could check), and
    so is a bare ``notebooks/....ipynb`` mention of a notebook that does not exist.
    """
    text = normalise(text)
    problems, headings = [], {}
    for source, section in references(text):
        path = root / ("README.md" if source == "README" else source)
        if source not in headings:
            headings[source] = (markdown_headings(path.read_text(encoding="utf-8")) if source == "README"
                                else notebook_headings(path)) if path.is_file() else None
        if headings[source] is None:
            problems.append(f"{source} does not exist")
        elif section not in headings[source]:
            problems.append(f'{source} has no heading "{section}"')
    well_formed = {m.start("section") for pattern in (NOTEBOOK_REFERENCE, README_REFERENCE)
                   for m in pattern.finditer(text)}
    for match in re.finditer(r'section "', text):
        if match.end() not in well_formed:
            context = text[max(0, match.start() - 60):match.end() + 40]
            problems.append(f"not in the reference convention: ...{context}...")
    for mention in NOTEBOOK_MENTION.findall(text):
        if not (root / mention).is_file():
            problems.append(f"{mention} does not exist")
    return sorted(set(problems))


def modules(package: Path = PACKAGE) -> dict[str, ast.Module]:
    """Every module of the package, parsed, by dotted name."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def public_definitions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """The module-level functions and classes whose name does not start with ``_``.

    Only ``def`` and ``class`` statements count: a name a module imports (a re-export, or an import under
    ``if TYPE_CHECKING:``) is defined, and documented, elsewhere.
    """
    return [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not node.name.startswith("_")]


def unreferenced(trees: dict[str, ast.Module]) -> list[str]:
    """``module:name`` of every public function and class whose docstring holds no reference."""
    return [f"{module}:{node.name}" for module, tree in trees.items() for node in public_definitions(tree)
            if not references(ast.get_docstring(node) or "")]


def all_docstrings(tree: ast.Module) -> list[tuple[str, str]]:
    """``(where, docstring)`` of the module and of every class, function and method in it."""
    found = [("module", ast.get_docstring(tree) or "")]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append((f"{node.name} (line {node.lineno})", ast.get_docstring(node) or ""))
    return found


def test_the_reader_finds_a_wrapped_reference_and_rejects_a_missing_heading(tmp_path):
    """The checks below can fail: a wrapped reference is found, and a wrong heading or notebook is reported."""
    (tmp_path / "notebooks").mkdir()
    cells = [{"cell_type": "markdown", "source": ["# 02 · Title\n", "\n", "## Batches, and what the loss may see\n",
                                                  "```\n", "# not a heading, fenced\n", "```\n"]},
             {"cell_type": "code", "source": ["# a comment, not a heading\n"]},
             {"cell_type": "markdown", "source": ['## The metric: ANLS, not "Levenshtein similarity"']}]
    (tmp_path / "notebooks" / "02_x.ipynb").write_text(json.dumps({"cells": cells}))
    (tmp_path / "README.md").write_text("# Title\n\n## Scaling out: from one GPU to several machines\n")
    assert notebook_headings(tmp_path / "notebooks" / "02_x.ipynb") == [
        "02 · Title", "Batches, and what the loss may see", 'The metric: ANLS, not "Levenshtein similarity"']

    source = ('def f():\n    """Do f.\n\n    Taught in ``notebooks/02_x.ipynb``, section "Batches, and what\n'
              '    the loss may see", and ``notebooks/02_x.ipynb``, section "The metric: ANLS, not\n'
              '    "Levenshtein similarity"". See the README, section "Scaling out: from one GPU to\n'
              '    several machines".\n    """\n')
    docstring = ast.get_docstring(ast.parse(source).body[0])
    assert references(docstring) == [("notebooks/02_x.ipynb", "Batches, and what the loss may see"),
                                     ("notebooks/02_x.ipynb", 'The metric: ANLS, not "Levenshtein similarity"'),
                                     ("README", "Scaling out: from one GPU to several machines")]
    assert reference_problems(docstring, tmp_path) == []

    wrong = ('Taught in ``notebooks/02_x.ipynb``, section "2. Load the model". Also ``notebooks/09_gone.ipynb``, '
             'section "Setup", the README, section "Scaling up", and ``notebooks/02_x.ipynb`` (section "Setup").')
    problems = reference_problems(wrong, tmp_path)
    unconventional = [p for p in problems if p.startswith("not in the reference convention")]
    assert len(unconventional) == 1 and '(section "Setup")' in unconventional[0]
    assert sorted(set(problems) - set(unconventional)) == [
        'README has no heading "Scaling up"', 'notebooks/02_x.ipynb has no heading "2. Load the model"',
        "notebooks/09_gone.ipynb does not exist"]
    assert reference_problems("see ``notebooks/07_missing.ipynb``", tmp_path) == [
        "notebooks/07_missing.ipynb does not exist"]
    assert references("Taught in notebook 02.") == []  # no path, no section: not a reference


def test_the_reader_counts_definitions_not_imports():
    """Re-exports and ``TYPE_CHECKING`` imports are not definitions; classes and async functions are."""
    source = ('from typing import TYPE_CHECKING\nfrom vlm_helpers.loop import train\nif TYPE_CHECKING:\n'
              '    from vlm_helpers.runtime import Preset\n'
              'def _private():\n    """No reference needed."""\n'
              'def documented():\n    """Taught in ``notebooks/02_x.ipynb``, section "Setup"."""\n'
              'def bare():\n    """Says nothing about where."""\n'
              'async def fetch():\n    pass\n'
              'class Thing:\n    """A class, with a method that does not count."""\n'
              '    def method(self):\n        pass\n')
    tree = ast.parse(source)
    assert [node.name for node in public_definitions(tree)] == ["documented", "bare", "fetch", "Thing"]
    assert unreferenced({"vlm_helpers.x": tree}) == ["vlm_helpers.x:bare", "vlm_helpers.x:fetch",
                                                     "vlm_helpers.x:Thing"]


def test_every_public_function_and_class_names_where_it_is_taught():
    trees = modules()
    assert len(public_definitions(trees["vlm_helpers.loop"])) > 5  # the package was found and read
    offenders = unreferenced(trees)
    assert not offenders, (f"{len(offenders)} public names have no ``notebooks/NN_name.ipynb``, section \"...\" "
                           "(or README, section \"...\") in their docstring:\n  " + "\n  ".join(offenders))


def test_every_reference_in_the_package_points_to_a_notebook_heading_that_exists():
    problems = [f"{module}: {where}: {problem}" for module, tree in modules().items()
                for where, docstring in all_docstrings(tree) for problem in reference_problems(docstring)]
    assert not problems, "references that do not resolve:\n  " + "\n  ".join(problems)
