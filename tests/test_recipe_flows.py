"""One flow per recipe: ``vlm-train --recipe X`` calls the public helpers its notebook teaches, in the notebook's order.

Each recipe (``vlm_helpers/recipes/``) names its notebook and its steps (``Recipe.notebook``, ``Recipe.steps``).
The steps are read from the source, not run: the notebook's code cells top to bottom, and the recipe's ``run``
function in the order its statements execute, with the recipe package's own functions inlined where they are
called (``run_chat_recipe``, the rows loader a recipe hands it, local helpers such as ``evaluate_on_rank0``).
Both must call every step, in the listed order (other calls may come between). A recipe that drops a step,
calls it in another order or runs a step the notebook does not, under the same name, fails here.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from pathlib import Path

import pytest

from vlm_helpers.cli import RECIPES

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _calls_in_order(node: ast.AST, skip: set[int] = frozenset()) -> list[ast.Call]:
    """Calls under ``node`` in source order, leaving out the bodies of the nested definitions in ``skip``."""
    found = []

    def visit(current):
        for child in ast.iter_child_nodes(current):
            if id(child) in skip:
                continue
            visit(child)
            if isinstance(child, ast.Call):
                found.append(child)

    visit(node)
    return sorted(found, key=lambda call: (call.lineno, call.col_offset))


def notebook_steps(name: str) -> list[str]:
    """The names called by the code cells of ``notebooks/<name>``, top to bottom."""
    names = []
    for cell in json.loads((NOTEBOOKS / name).read_text())["cells"]:
        if cell["cell_type"] == "code":  # shell and magic lines (the Colab set-up's !pip) are no Python
            source = "".join(line if not line.lstrip().startswith(("!", "%")) else "\n"
                             for line in "".join(cell["source"]).splitlines(keepends=True))
            names += [_name(call) for call in _calls_in_order(ast.parse(source))]
    return [name for name in names if name]


def _resolve(expr: ast.AST, namespace: dict, bound: dict):
    if isinstance(expr, ast.Name):
        return bound.get(expr.id, namespace.get(expr.id))
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):  # YourDataLoader(): its __call__
        made = namespace.get(expr.func.id)
        return made.__call__ if inspect.isclass(made) and "__call__" in vars(made) else None
    return None


def recipe_steps(function, bound: dict | None = None, depth: int = 0) -> list[str]:
    """The names ``function`` calls in execution order, the recipe package's functions inlined (``bound``: what
    the caller passed for its parameters, e.g. ``load_rows=YourDataLoader()``)."""
    bound = bound or {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    local = {node.name: node for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef) and node is not tree}
    names = []

    def walk(node, inlined: frozenset):
        for call in _calls_in_order(node, skip={id(n) for n in local.values()}):
            name = _name(call)
            if name is None:
                continue
            names.append(name)
            if isinstance(call.func, ast.Name) and name in local and name not in inlined:
                walk(local[name], inlined | {name})  # a local helper: its body runs here
                continue
            target = _resolve(call.func, function.__globals__, bound)
            if depth < 4 and inspect.isfunction(target) and target.__module__.startswith("vlm_helpers.recipes"):
                parameters = list(inspect.signature(target).parameters)
                passed = {parameters[i]: _resolve(arg, function.__globals__, bound) for i, arg in enumerate(call.args)
                          if i < len(parameters)}
                passed |= {kw.arg: _resolve(kw.value, function.__globals__, bound) for kw in call.keywords if kw.arg}
                names.extend(recipe_steps(target, {k: v for k, v in passed.items() if v is not None}, depth + 1))

    walk(tree, frozenset())
    return names


def missing_in_order(steps, called: list[str]) -> list[str]:
    """The steps that ``called`` does not contain in this order (empty: all of them, in order)."""
    position, missing = 0, []
    for step in steps:
        try:
            position = called.index(step, position) + 1
        except ValueError:
            missing.append(step)
    return missing


def test_the_order_check_itself():
    assert missing_in_order(["a", "b", "c"], ["x", "a", "y", "b", "c"]) == []
    assert missing_in_order(["a", "b", "c"], ["b", "a", "c"]) == ["b"]  # b comes before a: out of order
    assert missing_in_order(["a", "b"], ["a"]) == ["b"]


def test_the_reader_inlines_the_recipe_packages_functions_and_local_helpers():
    """``custom`` reads its data inside the loader it hands to ``run_chat_recipe``, and evaluates through a local
    helper: both are seen where they run."""
    steps = recipe_steps(RECIPES["custom"].run)
    assert steps.index("load_your_data") < steps.index("load_chat_vlm") < steps.index("train_with_trainer")
    assert steps.index("train_with_trainer") < len(steps) - 1 - steps[::-1].index("evaluate")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_recipe_runs_its_notebooks_steps_in_the_notebooks_order(name):
    recipe = RECIPES[name]
    assert recipe.notebook and (NOTEBOOKS / recipe.notebook).is_file(), name
    assert len(recipe.steps) >= 6, "a recipe's flow names its loading, data, training and evaluation steps"
    assert missing_in_order(recipe.steps, notebook_steps(recipe.notebook)) == [], recipe.notebook
    assert missing_in_order(recipe.steps, recipe_steps(recipe.run)) == [], f"vlm-train --recipe {name}"
