"""qlite runs with only its declared dependencies.

SciPy is not one of them, but the dev environment has it (through pytrec_eval), and Numba quietly
uses it: with SciPy present, ``np.dot`` inside a kernel compiles; without it, the kernel fails to
type on a user's machine. So a sample of the suite that compiles every kind of kernel (IVF-PQ build
and search, 4-bit fast-scan, the training step, a training run) is run again with SciPy hidden.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

HIDE_SCIPY = '''\
import importlib.machinery
import importlib.util
import os
import sys


class _HideScipy:
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: qlite does not depend on it)", name=name)
        return None


sys.meta_path.insert(0, _HideScipy())
# this file shadows the environment's own sitecustomize, if it has one: run that one too
_here = os.path.dirname(os.path.abspath(__file__))
_others = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _others)
if _spec is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
'''

SAMPLE = [
    "tests/test_index.py::test_recall_against_exact_search",
    "tests/test_index.py::test_update_equals_rebuild_with_same_codebooks",
    "tests/test_index.py::test_kmeans_subspaces_match_kmeans_per_block_whatever_the_threads",
    "tests/test_fastscan.py::test_fastscan_rescore_depth_and_rerank",
    "tests/test_train_kernels.py::test_adc_scores_and_backward_match_numpy",
    "tests/test_train.py::test_supervised_training_lifts_ivfpq_recall_and_leaves_the_cache_alone",
]


def test_the_index_and_training_run_without_scipy(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HIDE_SCIPY)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    # a cache of its own: kernels loaded from this session's cache (compiled with SciPy there) are not typed again
    env = {**os.environ, "PYTHONPATH": path, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    hidden = subprocess.run([sys.executable, "-c", "import scipy"], env=env, capture_output=True, text=True)
    assert hidden.returncode != 0 and "hidden: qlite does not depend on it" in hidden.stderr  # the run is a real check
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SAMPLE], cwd=root, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in .*", summary), summary  # nothing skipped or deselected
