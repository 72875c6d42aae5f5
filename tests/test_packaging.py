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
    setup, tiny_series, jupyter, tests = _fenced_commands((ROOT / "README.md").read_text())[:4]
    ci = (ROOT / ".ci" / "run").read_text()
    for step in setup.split(" && ")[2:]:  # venv creation differs (CI uses a fresh .venv-ci)
        if step.startswith("pip install torch=="):
            # the same pin; CI's pip finds the CPU wheel without the README's --index-url (README says so)
            pin = step.split()[2]
            assert "--index-url https://download.pytorch.org/whl/cpu" in step
            assert f"pip install {pin}\n" in ci, pin
        else:
            assert step in ci, step
    assert '".[notebook,test]"' in setup, "the set-up installs Jupyter as well as the tests"
    assert ci.rstrip().splitlines()[-1] == tests == "python -m pytest"
    slow = _fenced_commands((ROOT / "README.md").read_text())[4]
    assert slow == "python -m pytest -m slow" and f"\n{slow}\n" in ci, "the slow tiers run in CI, by marker"
    assert "--nbmake notebooks/" in tiny_series and "VLM_TINY=1" in tiny_series
    assert jupyter == "VLM_TINY=1 jupyter lab notebooks/"


def test_jupyter_starts_after_the_set_up(tmp_path):
    """The README's `jupyter lab` serves after the set-up (a real server on a free local port, then stopped)."""
    import os
    import select
    import time

    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1", "--port", "0",
               f"--ServerApp.root_dir={ROOT / 'notebooks'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if not select.select([server.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break  # silent until the deadline
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            if re.search(r"http://127\.0\.0\.1:\d+/lab", line):
                break
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a server slow to shut down on a busy machine is not what is tested
            server.kill()
            server.wait(timeout=30)
    assert any(re.search(r"http://127\.0\.0\.1:\d+/lab", line) for line in lines), "".join(lines[-20:])


def test_badges_readme_table_and_setup_cells_are_generated_from_the_one_setting():
    result = subprocess.run([sys.executable, "-m", "vlm_helpers.badges", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["vlm-series"]["repository"]
    assert f"colab.research.google.com/github/{repository}/blob/" in (ROOT / "colab_badges.md").read_text()


def test_importing_the_package_loads_no_heavy_library():
    code = "import sys, vlm_helpers; print(sorted(m for m in ('torch','transformers','datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_tested_minimums_are_the_colab_constraints_and_the_declared_floors():
    """One tested range, said three times: runtime.TESTED_VERSIONS (what the notebooks warn about),
    constraints/colab.txt (what .ci/run's second environment installs) and the floors in requirements.txt."""
    from vlm_helpers.runtime import TESTED_VERSIONS

    pins = dict(line.split("==") for line in (ROOT / "constraints" / "colab.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {name: minimum for name, (minimum, _) in TESTED_VERSIONS.items()} == pins
    requirements = _names([line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                           if line.strip() and not line.startswith("#")])
    for name, minimum in pins.items():
        floor = re.search(r">=([0-9.]+)", requirements[name.lower()]).group(1)
        assert [int(x) for x in minimum.split(".")][: len(floor.split("."))] == [int(x) for x in floor.split(".")], name
    assert "-c constraints/colab.txt" in (ROOT / ".ci" / "run").read_text()


def test_versions_warns_outside_the_tested_range():
    from vlm_helpers.runtime import TESTED_VERSIONS, version_warnings

    inside = {name: minimum for name, (minimum, _) in TESTED_VERSIONS.items()}
    assert version_warnings(inside) == []
    older = version_warnings({**inside, "transformers": "5.0.0"})
    assert older == ["transformers 5.0.0 is older than the series' tested minimum 5.15.0"]
    newer = version_warnings({**inside, "transformers": "6.0.0", "peft": "1.2.0"})
    assert len(newer) == 2 and all("newer major version" in line for line in newer)
