"""The package's layout: no import cycles, and the concepts that were once defined twice exist once.

Imports are read from the source (``ast``), every one of them: module level, inside functions
(lazy imports) and under ``if TYPE_CHECKING:``. A cycle through any of them means two modules
cannot be lifted apart, which is what a reader copying one of them needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vlm_helpers"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "vlm_helpers.data.images.to_rgb" -> the module
                target = target.rpartition(".")[0]
            if target and target != name and target != "vlm_helpers":
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported_modules(name, path, known) for name, path in found.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's smallest witness, found by depth-first search from each module."""
    cycles = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    cycles.append(path + [start])
                elif nxt not in path and nxt > start:  # report each cycle once, from its smallest module
                    stack.append((nxt, path + [nxt]))
    return cycles


def test_the_graph_reader_sees_lazy_and_type_checking_imports(tmp_path):
    """The reader itself: a cycle made only of a lazy import and a TYPE_CHECKING import is found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert find_cycles(graph) == [["a", "b", "a"]]
    source = tmp_path / "vlm_helpers" / "x.py"
    source.parent.mkdir()
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vlm_helpers.y import Y\n"
                      "def f():\n    from .z import g\n")
    known = {"vlm_helpers.x", "vlm_helpers.y", "vlm_helpers.z"}
    assert imported_modules("vlm_helpers.x", source, known) == {"vlm_helpers.y", "vlm_helpers.z"}


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert "vlm_helpers.loop" in graph["vlm_helpers.hf_trainer"]  # the reader sees lazy imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", ["REPORT_TO_CHOICES", "LLAVA_PHI3_MODEL_ID", "IDEFICS2_MODEL_ID", "IGNORE_INDEX",
                                  "needs_gradient_checkpointing", "scan_checkpoints", "Distributed"])
def test_each_concept_is_defined_once(name):
    """Assigned or defined at module level in exactly one module (imports and re-exports do not count)."""
    owners = []
    for module, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                owners.append(module)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    owners.append(module)
    assert len(owners) == 1, f"{name} is defined in {owners}"


def test_the_command_line_help_points_to_a_readme_section_that_exists():
    import re

    from vlm_helpers.cli.main import build_parser

    text = build_parser().format_help()
    sections = re.findall(r'the README, section "([^"]+)"', text.replace("\n", " "))
    assert sections, "the --help text names the README section on scaling out"
    headings = [line.lstrip("#").strip() for line in (PACKAGE.parent / "README.md").read_text().splitlines()
                if line.startswith("#")]
    for section in sections:
        assert section in headings, section
    assert "docs/" not in text  # no pointer to a folder the project does not have
