"""Install files and docs stay consistent: requirements vs pyproject, README vs CI, badges."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = {"timm", "torchvision", "flash-attn", "flash_attn"}


def _names(requirements: list[str]) -> dict[str, str]:
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower(): r for r in requirements}


def test_requirements_txt_matches_pyproject_dependencies():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert _names(requirements) == _names(pyproject["dependencies"])
    assert "torch" not in _names(requirements), "torch must stay out: Colab keeps its own build"


def test_base_and_test_installs_pull_no_gpu_only_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = set(_names(pyproject["dependencies"])) | set(_names(pyproject["optional-dependencies"]["test"]))
    assert not base & GPU_ONLY
    assert GPU_ONLY & set(_names(pyproject["optional-dependencies"]["gpu"]))


def _fenced_commands(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)]


def test_ci_runs_exactly_the_readme_commands():
    readme_commands = _fenced_commands((ROOT / "README.md").read_text())
    setup, tiny_series, tests = readme_commands[:3]
    ci = (ROOT / ".ci" / "run").read_text()
    for step in setup.split(" && ")[2:]:  # venv creation differs (CI uses a fresh .venv-ci)
        assert step in ci, step
    assert ci.rstrip().splitlines()[-1] == tests
    assert "--nbmake notebooks/" in tiny_series and "VLM_TINY=1" in tiny_series


def test_badges_readme_table_and_setup_cells_are_generated_from_the_one_setting():
    result = subprocess.run([sys.executable, "-m", "vlm_helpers.badges", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["vlm-series"]["repository"]
    assert f"colab.research.google.com/github/{repository}/blob/" in (ROOT / "colab_badges.md").read_text()


def test_importing_the_package_loads_no_heavy_library():
    code = "import sys, vlm_helpers; print(sorted(m for m in ('torch','transformers','datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
