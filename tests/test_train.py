import json
import subprocess
import sys

import numpy as np
import pytest

from qlite.build import build_cache
from qlite.cache import Cache
from qlite.errors import QliteError
from qlite.indexing import build_index, open_index
from qlite.train.candidates import build_candidates
from qlite.train.checkpoint import checkpoint_path, log_path
from qlite.train.config import TrainConfig, lr_factor
from qlite.train.trainer import train

from .conftest import demo_docs, kill_when, write_jsonl


def test_candidates_union_dedup_insert_mask_and_budget():
    hits = np.array([[5, 9, 2, -1],
                     [9, 7, 5, 1]])
    positives = np.array([3, 7])  # query 0's positive was missed by the index; query 1's was found
    query_positives = [np.array([3, 9]), np.array([7])]  # 9 is also relevant to query 0
    c = build_candidates(hits, positives, query_positives, budget=100)
    assert c.rows.tolist() == [1, 2, 3, 5, 7, 9]  # union, deduplicated, sorted, positive 3 inserted
    assert c.rows[c.target].tolist() == [3, 7]
    assert c.inserted == 1
    masked = {(b, int(c.rows[j])) for b, j in zip(*np.nonzero(c.mask))}
    assert masked == {(0, 9)}  # 9 is never a negative of query 0, but stays one for query 1
    # a budget keeps the positives and the best-ranked negatives across the batch
    c = build_candidates(hits, positives, query_positives, budget=4)
    assert c.rows.tolist() == [3, 5, 7, 9]


def test_lr_factor_warms_up_then_decays_to_zero():
    f = [lr_factor(s, 100, 10) for s in range(1, 101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] == pytest.approx(0.0)


def test_config_errors_name_the_option():
    with pytest.raises(QliteError, match="--batch-size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(QliteError, match="nothing to train"):
        TrainConfig(train_head=False, train_cache=False).validate()


@pytest.fixture(scope="module")
def title_task(tmp_path_factory, tiny_model):
    """300 SciFact passages encoded by a tiny random BERT; each of 240 queries is a passage's title."""
    root = tmp_path_factory.mktemp("train")
    docs = demo_docs()
    corpus = write_jsonl(root / "corpus.jsonl", [{**d, "title": ""} for d in docs])
    chosen = docs[:240]
    queries = write_jsonl(root / "queries.jsonl", [{"_id": f"q{i}", "text": d["title"]} for i, d in enumerate(chosen)])
    qrels = root / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{d['_id']}\t1\n" for i, d in enumerate(chosen)))
    cache = root / "base.h5"
    build_cache(corpus, cache, model_dir=tiny_model, quiet=True, threads=1)
    build_index(cache, nlist=8, m=8, nbits=6, opq=False, threads=1, quiet=True)
    return {"root": root, "cache": cache, "queries": queries, "qrels": qrels}


def copy_cache(task, name):
    import shutil

    dst = task["root"] / f"{name}.h5"
    shutil.copy(task["cache"], dst)
    shutil.copy(task["root"] / "base.ivfpq.h5", task["root"] / f"{name}.ivfpq.h5")
    return dst


def index_recall(cache_path, queries, qrels, k=10):
    from qlite.evaluate import evaluate

    report = evaluate(cache_path, queries, qrels, (f"recall@{k}",), threads=1, nprobe=2)
    return {name.split()[0]: vals[f"recall@{k}"] for name, vals in report.rows}


def test_training_lifts_ivfpq_recall_and_search_uses_the_head(title_task):
    before = index_recall(title_task["cache"], title_task["queries"], title_task["qrels"])
    path = copy_cache(title_task, "trained")
    cfg = TrainConfig(batch_size=16, k=40, epochs=8, lr=3e-3, head_lr=1e-3, eval_every=15, refresh_every=5,
                      nprobe=2)
    # held-out titles cannot improve (their passages are not trained): early-stop on the training queries
    result = train(path, title_task["queries"], title_task["qrels"], title_task["qrels"], config=cfg, threads=1,
                   quiet=True)
    after = index_recall(path, title_task["queries"], title_task["qrels"])
    # recorded: IVF-PQ recall@10 of the 240 title queries (nprobe 2 of 8) 0.09 -> 0.45; flat 0.10 -> 0.76
    assert after["ivfpq"] >= before["ivfpq"] + 0.25, (before, after)
    assert result.dev_best > result.dev_start
    with Cache(path) as c:
        w, b = c.head()
        assert not np.allclose(w, np.eye(c.dim))  # the head trained, and search/eval read it from the cache
        base = Cache(title_task["cache"])
        assert base.head() is None
    # the saved index is the final embeddings, encoded
    index = open_index(Cache(path))
    with Cache(path) as c:
        rows = np.arange(c.count)
        labels, codes = index._encode(index.rotate(c.embeddings[rows]))
        np.testing.assert_array_equal(index.codes[index.row_slot[rows]], codes)
    log = [json.loads(line) for line in log_path(path).read_text().splitlines()]
    assert any("loss" in e for e in log) and any("dev_ndcg@10" in e for e in log)
    # rerunning the finished command does nothing
    again = train(path, title_task["queries"], title_task["qrels"], title_task["qrels"], config=cfg, threads=1,
                  quiet=True)
    assert again.already_done


def test_changed_settings_are_refused_on_resume(title_task):
    path = copy_cache(title_task, "refuse")
    cfg = TrainConfig(batch_size=16, k=20, steps=5, eval_every=5, nprobe=2)
    train(path, title_task["queries"], title_task["qrels"], config=cfg, threads=1, quiet=True)
    with pytest.raises(QliteError, match="differs: lr"):
        train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(**{**cfg.__dict__, "lr": 0.1}),
              threads=1, quiet=True)


def _checkpoint_step(path):
    import h5py

    try:
        with h5py.File(checkpoint_path(path), "r") as f:
            return json.loads(f.attrs["meta"])["step"]
    except (OSError, KeyError):
        return -1


def test_kill_9_during_training_then_rerun_ends_where_a_clean_run_ends(title_task):
    args = [sys.executable, "-m", "qlite", "train", "--queries", str(title_task["queries"]), "--qrels",
            str(title_task["qrels"]), "--batch-size", "8", "-k", "30", "--epochs", "12", "--nprobe", "2",
            "--checkpoint-every", "7", "--eval-every", "20", "--refresh-every", "3", "--patience", "100",
            "--dev-qrels", str(title_task["qrels"]), "--cpu-threads", "1", "--quiet"]
    clean = copy_cache(title_task, "clean")
    subprocess.run(args[:4] + [str(clean)] + args[4:], check=True, capture_output=True)

    path = copy_cache(title_task, "killed")
    cmd = args[:4] + [str(path)] + args[4:]
    kills, seen = 0, []
    for target in (15, 120, 250):
        kills += kill_when(cmd, lambda: _checkpoint_step(path) >= target)
        seen.append(_checkpoint_step(path))
        with Cache(path) as c:  # the cache always opens
            assert c.complete and c.trainable
    assert kills >= 2, f"training finished before it could be killed: {seen}"
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with Cache(path) as a, Cache(clean) as b:
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        for name in ("head_weight", "head_bias", "adam_m", "adam_v", "adam_steps"):
            np.testing.assert_array_equal(a.array(name), b.array(name))
    ia, ib = open_index(Cache(path)), open_index(Cache(clean))
    np.testing.assert_array_equal(ia.codes, ib.codes)


def test_export_folds_the_head_into_one_onnx_model(title_task, tmp_path):
    from click.testing import CliRunner

    from qlite.cli import cli
    from qlite.encoder.encoder import Encoder
    from qlite.evaluate import query_encoder

    path = copy_cache(title_task, "export")
    train(path, title_task["queries"], title_task["qrels"], title_task["qrels"],
          config=TrainConfig(batch_size=16, k=20, steps=10, eval_every=5, nprobe=2, head_lr=1e-2), threads=1,
          quiet=True)
    r = CliRunner().invoke(cli, ["export", str(path), "--out", str(tmp_path / "served"), "--quiet"])
    assert r.exit_code == 0, r.output
    served = tmp_path / "served"
    texts = ["a query about cells", "protein folding", ""]
    with Cache(path) as c:
        want = c.apply_head(query_encoder(c, threads=1).encode(texts))
        np.testing.assert_array_equal(np.load(served / "embeddings.npy"), c.embeddings)
        assert (served / "ids.txt").read_text().split() == [i.decode() for i in c.ids]
    got = Encoder(model_dir=served / "query_encoder", threads=1).encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(want, query_encoder(Cache(path), threads=1).encode(texts), atol=1e-4)  # head not identity
    r = CliRunner().invoke(cli, ["export", str(path), "--out", str(served)])
    assert r.exit_code == 1 and "not empty" in r.output


def test_cli_train_then_info_reports_the_run(title_task):
    from click.testing import CliRunner

    from qlite.cli import cli

    path = copy_cache(title_task, "cli")
    args = ["train", str(path), "--queries", str(title_task["queries"]), "--qrels", str(title_task["qrels"]),
            "--steps", "12", "--batch-size", "16", "-k", "20", "--nprobe", "2", "--eval-every", "6",
            "--cpu-threads", "1", "--quiet"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("trained 12 steps") and "kept step" in r.output
    r = CliRunner().invoke(cli, ["info", str(path)])
    assert "trained: done: step 12 of 12" in r.output
    r = CliRunner().invoke(cli, args[:-3] + ["--tau", "0"])
    assert r.exit_code == 1 and "--tau must be positive" in r.output
