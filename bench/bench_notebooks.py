"""Wall time of each notebook in tiny mode, run in series order (01 -> 05), as CI runs them.

    python bench/bench_notebooks.py            # fresh tiny-model cache: includes building the models
    python bench/bench_notebooks.py --warm     # reuse ~/.cache/vlm_helpers (models already built)

Each notebook is executed by a Jupyter kernel (as ``pytest --nbmake`` does), with its own
temporary results folder shared by the five so that 05 has something to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_notebooks import SERIES, run_notebook  # noqa: E402  (the tests' runner: one definition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", action="store_true", help="reuse the default tiny-model cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(os.environ.get("VLM_CACHE", Path.home() / ".cache" / "vlm_helpers")) if args.warm \
            else Path(scratch) / "cache"
        results = Path(scratch) / "results"
        total = 0.0
        for name in SERIES:
            start = time.perf_counter()
            run_notebook(name, results, cache)
            seconds = time.perf_counter() - start
            total += seconds
            print(f"{name:40} {seconds:6.1f} s", flush=True)
        print(f"{'all five (tiny mode, ' + ('warm' if args.warm else 'cold') + ' cache)':40} {total:6.1f} s")


if __name__ == "__main__":
    main()
