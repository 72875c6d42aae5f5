"""The package's layout: no import cycles, short import chains, no late imports, modules one can read in one
sitting, a chat collator that lifts out with one sibling, and the concepts that were once defined twice exist once.

Imports are read from the source (``ast``), every one of them: module level, inside functions
(lazy imports), under ``if TYPE_CHECKING:``, and the ones a string closes (a registry naming
``"vlm_helpers.x"``, ``importlib.import_module(...)``). A cycle through any of them means two modules
cannot be lifted apart, which is what a reader copying one of them needs. ARCHITECTURE.md maps the modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vlm_helpers"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and ast.get_docstring(node, clean=False) is not None}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source, a string naming one included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            # a registry ("vlm_helpers.tiny.florence2", "build_tiny_florence2") or import_module("vlm_helpers.x"): a
            # string that is a module's dotted name (prose such as "python -m vlm_helpers.cli ..." is no import)
            match = re.fullmatch(r"(vlm_helpers(?:\.\w+)+)(?::\w+)?", node.value.strip())
            targets = [match.group(1)] if match else []
        elif isinstance(node, ast.Import):
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
            while target and target not in known:  # "vlm_helpers.supervision.to_rgb" -> the module
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


def test_the_graph_reader_sees_registries_and_late_imports(tmp_path):
    """A module path in a string (a registry, ``import_module``) is an import; an import after code is late."""
    source = tmp_path / "vlm_helpers" / "r.py"
    source.parent.mkdir()
    source.write_text('"""Mentions vlm_helpers.q in its docstring only."""\nimport os\n'
                      'BUILDERS = {"x": ("vlm_helpers.x", "build")}\nfrom vlm_helpers.y import Y  # noqa: E402\n'
                      'def f():\n    print("run python -m vlm_helpers.q --help")\n'
                      '    return importlib.import_module("vlm_helpers.z.inner")\n')
    known = {"vlm_helpers.r", "vlm_helpers.x", "vlm_helpers.y", "vlm_helpers.z", "vlm_helpers.q"}
    assert imported_modules("vlm_helpers.r", source, known) == {"vlm_helpers.x", "vlm_helpers.y", "vlm_helpers.z"}
    assert late_imports(source) == [4]


def late_imports(path: Path) -> list[int]:
    """Lines of module-level imports that come after code (a docstring, ``if TYPE_CHECKING:`` and
    ``try: import ... except ImportError`` blocks are not code here)."""
    late, code_seen = [], False
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if code_seen:
                late.append(node.lineno)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        elif isinstance(node, ast.Try) and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in node.body):
            continue
        else:
            code_seen = True
    return late


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest import chain (the graph has no cycles): modules from the importer to the last imported."""
    best: dict[str, list[str]] = {}

    def chain(node: str) -> list[str]:
        if node not in best:
            best[node] = [node] + max((chain(n) for n in graph[node]), key=len, default=[])
        return best[node]

    return max((chain(node) for node in graph), key=len)


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen - {start}


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert "vlm_helpers.loop" in graph["vlm_helpers.hf_trainer"]  # the reader sees lazy imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_after_code():
    late = {name: lines for name, path in modules().items() if (lines := late_imports(path))}
    assert not late, f"imports after code (module: lines): {late}"


def test_the_longest_import_chain_is_at_most_six_links():
    """A reader who copies a module reads at most six modules below it."""
    chain = longest_chain(import_graph())
    assert len(chain) - 1 <= 6, " -> ".join(chain)


def test_the_chat_collator_lifts_out_with_one_sibling_and_no_datasets():
    """``chat_collator.py`` plus ``supervision.py`` is all a project needs to copy (torch, PIL, transformers'
    processor): no other module of the package, and no ``datasets``."""
    graph = import_graph()
    assert closure(graph, "vlm_helpers.chat_collator") == {"vlm_helpers.supervision"}
    for name in ("chat_collator", "supervision"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        third_party = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                       for alias in node.names}
        third_party |= {node.module.split(".")[0] for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert "datasets" not in third_party, name


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_module_reads_in_one_sitting(name):
    """At most about 500 lines (505: a docstring's tail is no new idea)."""
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= 505, f"{name}: {lines} lines"


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

    from vlm_helpers.cli import build_parser

    text = build_parser().format_help()
    sections = re.findall(r'the README, section "([^"]+)"', text.replace("\n", " "))
    assert sections, "the --help text names the README section on scaling out"
    headings = [line.lstrip("#").strip() for line in (PACKAGE.parent / "README.md").read_text().splitlines()
                if line.startswith("#")]
    for section in sections:
        assert section in headings, section
    assert "docs/" not in text  # no pointer to a folder the project does not have
