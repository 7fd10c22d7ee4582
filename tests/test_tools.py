"""The dev-only helpers of tools/dev_sweep.py (how defaults are chosen)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
dev_sweep = pytest.importorskip("dev_sweep")


def test_cross_fitted_reads_each_half_at_the_step_the_other_chose():
    # half a peaks at the second evaluation, half b at the third
    evals = [(0, 0.50, 0.40), (10, 0.60, 0.42), (20, 0.55, 0.48)]
    # a's choice (step 10) read on b: +0.02; b's choice (step 20) read on a: +0.05
    assert dev_sweep.cross_fitted(evals) == pytest.approx(0.5 * (0.02 + 0.05))
    # a run with only the untrained evaluation gains nothing
    assert dev_sweep.cross_fitted([(0, 0.5, 0.5)]) == 0.0


def test_variants_are_typed_by_the_training_options():
    assert dev_sweep.parse_variant("defaults") == {}
    assert dev_sweep.parse_variant("tau=0.03,pseudo_source=both,train_rows=on,k=50") == {
        "tau": 0.03, "pseudo_source": "both", "train_rows": True, "k": 50}
    with pytest.raises(SystemExit, match="unknown training option 'nope'"):
        dev_sweep.parse_variant("nope=1")
