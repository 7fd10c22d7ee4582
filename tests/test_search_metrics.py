import math

import numpy as np
import pytest

from qlite.errors import QliteError
from qlite.index.flat import flat_search
from qlite.metrics import evaluate_run, parse_metric, query_metric


def test_flat_search_equals_full_sort_across_blocks():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1000, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    for metric in ("ip", "l2"):
        scores, rows = flat_search(emb, q, 10, block_rows=128, metric=metric)
        if metric == "ip":
            full = q @ emb.T
        else:
            full = -((q[:, None, :] - emb[None]) ** 2).sum(-1)
        want = np.argsort(-full, axis=1)[:, :10]
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-4, atol=1e-4)


def test_flat_search_ties_go_to_the_lower_row_whatever_the_block():
    rng = np.random.default_rng(1)
    # small integers: every product is exact, so equal rows score exactly equal in any block
    base = rng.integers(-3, 4, (50, 8)).astype(np.float32)
    emb = np.repeat(base, 6, axis=0)[rng.permutation(300)]  # every score appears at least 6 times
    q = rng.integers(-3, 4, (5, 8)).astype(np.float32)
    full = q @ emb.T
    want = np.lexsort((np.broadcast_to(np.arange(300), full.shape), -full), axis=1)[:, :20]  # oracle
    for block_rows in (7, 64, 300, None):
        scores, rows = flat_search(emb, q, 20, block_rows=block_rows)
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_array_equal(scores, np.take_along_axis(full, want, 1))


def test_flat_search_k_larger_than_n_and_bad_k():
    emb = np.eye(3, dtype=np.float32)
    s, r = flat_search(emb, emb[:1], 10)
    assert r.shape == (1, 3) and r[0, 0] == 0
    with pytest.raises(QliteError, match="-k must be positive"):
        flat_search(emb, emb[:1], 0)


def test_metrics_hand_computed():
    judged = {"a": 2, "b": 1, "c": 0, "z": 1}
    ranked = ["x", "a", "c", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert query_metric("ndcg", 10, ranked, judged) == pytest.approx(dcg / idcg)
    assert query_metric("recall", 3, ranked, judged) == pytest.approx(1 / 3)
    assert query_metric("mrr", 10, ranked, judged) == pytest.approx(0.5)
    assert query_metric("mrr", 1, ranked, judged) == 0.0
    assert query_metric("precision", 4, ranked, judged) == pytest.approx(0.5)
    assert query_metric("map", 10, ranked, judged) == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_parse_metric_rejects_unknown():
    assert parse_metric("nDCG@10") == ("ndcg", 10)
    for bad in ("ndcg", "foo@3", "recall@0", "mrr@x"):
        with pytest.raises(QliteError, match="unknown metric"):
            parse_metric(bad)


def test_metrics_agree_with_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(1)
    docs = [f"d{i}" for i in range(60)]
    qrels, run_scores = {}, {}
    for q in range(40):
        rel = rng.choice(docs, size=rng.integers(1, 8), replace=False)
        qrels[f"q{q}"] = {d: int(rng.integers(1, 3)) for d in rel}
        qrels[f"q{q}"]["d59"] = 0  # a judged non-relevant doc
        scores = rng.permutation(len(docs)).astype(float)  # distinct scores: no tie-break ambiguity
        run_scores[f"q{q}"] = {d: float(s) for d, s in zip(docs, scores)}
    run = {q: sorted(s, key=s.get, reverse=True) for q, s in run_scores.items()}
    ours, _ = evaluate_run(run, qrels, ("ndcg@10", "recall@20", "map@100", "precision@5"))
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.20", "map_cut.100", "P.5"})
    theirs = ev.evaluate(run_scores)
    for ours_name, theirs_name in [("ndcg@10", "ndcg_cut_10"), ("recall@20", "recall_20"),
                                   ("map@100", "map_cut_100"), ("precision@5", "P_5")]:
        want = np.mean([v[theirs_name] for v in theirs.values()])
        assert ours[ours_name] == pytest.approx(want, abs=1e-9), ours_name
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(
        {q: {d: s for d, s in sc.items() if d in run[q][:10]} for q, sc in run_scores.items()})
    assert evaluate_run(run, qrels, ("mrr@10",))[0]["mrr@10"] == pytest.approx(
        np.mean([v["recip_rank"] for v in rr.values()]), abs=1e-9)
