import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from qlite.build_cache import build_cache
from qlite.cache import Cache
from qlite.encoder.model_dir import file_sha256
from qlite.errors import QliteError
from qlite.evaluate import evaluate
from qlite.index.build import build_index
from qlite.runs import UNTRAINED, latest_run, list_runs, load_run, open_retriever, remove_run, run_dir
from qlite.train.candidates import build_candidates, first_seen
from qlite.train.config import TrainConfig, lr_factor, pseudo_sources
from qlite.encoder.queries import encode_queries, query_encoder
from qlite.progress import Progress
from qlite.index.flat import flat_search
from qlite.index.ivfpq import IVFPQIndex, IVFPQParams
from qlite.train import pool as pool_module
from qlite.train.pool import (Labelled, build_pool, csr, pseudo_sentences, pseudo_texts, split_by_passage,
                              teacher_top)
from qlite.train.state import TrainState
from qlite.train.trainer import train

from .conftest import demo_docs, kill_when, write_jsonl


def test_candidates_union_dedup_insert_mask_and_budget():
    hits = np.array([[5, 9, 2, -1],
                     [9, 7, 5, 1],
                     [4, 5, -1, -1]])
    teacher = np.array([[8, 5], [7, 6], [4, 0]])
    positives = np.array([3, 7, -1])  # query 0's positive was missed by both; query 2 has no label
    query_positives = [np.array([3, 9]), np.array([7]), np.zeros(0, np.int64)]  # 9 is also relevant to query 0
    c = build_candidates([hits, teacher], positives, query_positives)
    assert c.rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # union, deduplicated, sorted, positive 3 inserted
    assert c.rows[c.target[:2]].tolist() == [3, 7]
    assert c.inserted == 1
    masked = {(b, int(c.rows[j])) for b, j in zip(*np.nonzero(c.mask))}
    assert masked == {(0, 9)}  # 9 is never a negative of query 0, but stays one for the others
    # a budget keeps the positives and the best ranks across lists and queries (rank-major)
    c = build_candidates([hits, teacher], positives, query_positives, budget=6)
    assert c.rows.tolist() == [3, 4, 5, 7, 8, 9]


@pytest.mark.parametrize("limit", [0, 7, 10_000])
def test_first_seen_matches_numpy(limit):
    rng = np.random.default_rng(limit)
    order = rng.integers(-1, 300, 2_000)
    exclude = np.unique(rng.integers(0, 300, 20))
    kept = order[order >= 0]
    _, first = np.unique(kept, return_index=True)  # the oracle: first appearances, in order of appearance
    want = kept[np.sort(first)]
    want = want[~np.isin(want, exclude)][:limit]
    assert first_seen(order, exclude, limit).tolist() == want.tolist()


def test_lr_factor_warms_up_then_decays_to_zero():
    f = [lr_factor(s, 100, 10) for s in range(1, 101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] == pytest.approx(0.0)


def test_config_errors_and_run_names():
    with pytest.raises(QliteError, match="batch_size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(QliteError, match="nothing to train"):
        TrainConfig(train_head=False, train_codebooks=False, train_coarse=False).validate()
    with pytest.raises(QliteError, match="no loss"):
        TrainConfig(distill=0, supervised=0).validate()
    assert TrainConfig().run_name() == "default"
    assert TrainConfig(tau=0.1, train_rows=True).run_name() == "tau=0.1+rows=on"
    long = TrainConfig(tau=0.1, lr=0.002, head_lr=0.001, epochs=3.5, batch_size=7, k=13, teacher_k=9, seed=4)
    assert len(long.run_name()) <= 60 and long.run_name() != TrainConfig(tau=0.1, lr=0.002, head_lr=0.001,
                                                                           epochs=3.5, batch_size=7, k=13,
                                                                           teacher_k=9, seed=5).run_name()


def test_default_dev_holds_out_passages_and_as_many_queries():
    parts = [np.array([0]), np.array([1, 2]), np.array([3]), np.array([2, 4]), np.array([5])] * 20
    ptr, rows = csr(parts)
    labelled = Labelled([f"q{i}" for i in range(100)], ["t"] * 100, ptr, rows, {f"q{i}": {} for i in range(100)})
    held = np.zeros(6, bool)
    held[[2, 3]] = True
    train, dev, how = split_by_passage(labelled, held, seed=0)
    assert how == "dev: 20 queries on held-out passages + 20 held-out queries"
    dev_parts = [tuple(dev.positives(i)) for i in range(len(dev))]
    assert dev_parts.count((3,)) == 20 and len(dev) == 40  # every query whose positives are all held out ...
    assert not held[train.pos_rows].any()  # ... and no training query keeps a held-out positive
    assert len(train) == 60 and not set(train.qids) & set(dev.qids)
    _, dev, how = split_by_passage(labelled.subset(range(40)), held, seed=0)  # too few all-held: hold out queries
    assert how == "dev: held-out queries" and len(dev) == 4


def test_state_saves_and_loads_itself(tmp_path):
    st = TrainState.start(np.eye(3, dtype=np.float32), np.ones((2, 3), np.float32), np.zeros((1, 4, 3), np.float32))
    st.step, st.best_score, st.history = 7, 0.5, [[0, 0.25], [5, 0.5]]
    st.rows_changed = np.array([True, False, True])
    st.save(tmp_path / "s.h5", {"fingerprint": 1})
    back, meta = TrainState.load(tmp_path / "s.h5")
    assert meta == {"fingerprint": 1} and back.step == 7 and back.history == [[0, 0.25], [5, 0.5]]
    np.testing.assert_array_equal(back.head, st.head)
    np.testing.assert_array_equal(back.rows_changed, st.rows_changed)
    assert back.journal_rows is None


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
    build_cache(corpus, cache, model_dir=tiny_model, threads=1)
    build_index(cache, nlist=8, m=8, nbits=6, opq=False, threads=1)
    return {"root": root, "cache": cache, "queries": queries, "qrels": qrels}


def fresh_copy(task, name):
    """A copy of the task's cache and base index, with no runs."""
    import shutil

    dst = task["root"] / f"{name}.h5"
    shutil.copy(task["cache"], dst)
    shutil.copy(task["root"] / "base.ivfpq.h5", task["root"] / f"{name}.ivfpq.h5")
    return dst


def index_metric(cache_path, task, metric="recall@10", run=None):
    report = evaluate(cache_path, task["queries"], task["qrels"], (metric,), runs=run, threads=1, nprobe=2)
    return {r.system.split()[0]: r.means[metric] for r in report.rows}


def test_supervised_training_lifts_ivfpq_recall_and_leaves_the_cache_alone(title_task):
    path = fresh_copy(title_task, "supervised")
    sha = file_sha256(path)
    before = index_metric(path, title_task)
    cfg = TrainConfig(supervised=1.0, batch_size=16, k=40, teacher_k=20, epochs=20, lr=1e-3, head_lr=3e-3,
                      nprobe=2, pseudo_queries=0, patience=20, train_rows=True, rows_lr=0.05, rows_radius=0.5)
    # the titles are the only queries: early-stop on them (dev = train) to test what training can learn
    result = train(path, title_task["queries"], title_task["qrels"], title_task["qrels"], config=cfg, threads=1)
    after = index_metric(path, title_task)
    # recorded: IVF-PQ recall@10 of the 240 title queries (nprobe 2 of 8) 0.075 -> 0.654; flat 0.104 -> 0.838
    assert after["ivfpq"] >= before["ivfpq"] + 0.25, (before, after)
    assert result.dev_best > result.dev_start and result.run == cfg.run_name() and not result.already_done
    assert file_sha256(path) == sha  # the cache is never modified
    untrained = index_metric(path, title_task, run=UNTRAINED)
    assert untrained == before  # ... so the untrained state can still be evaluated
    r = open_retriever(Cache(path))
    assert r.name == result.run and not np.allclose(r.head[:-1], np.eye(r.head.shape[1]))
    log = [json.loads(line) for line in (run_dir(path, r.name) / "log.jsonl").read_text().splitlines()]
    assert any("loss" in e for e in log) and any("dev_ndcg@10" in e for e in log)
    evals = [e for e in log if "dev_ndcg@10" in e]  # every evaluation also scores the two halves of dev
    n = 240  # dev is the 240 title queries here
    for e in evals:  # ... whose query-weighted mean is the dev score
        a, b = e["dev_halves"]
        assert abs((a * ((n + 1) // 2) + b * (n // 2)) / n - e["dev_ndcg@10"]) < 1e-4, e
    assert len({tuple(e["dev_halves"]) for e in evals}) > 1
    assert sorted(p.name for p in run_dir(path, r.name).iterdir()) == ["log.jsonl", "run.h5"]
    again = train(path, title_task["queries"], title_task["qrels"], title_task["qrels"], config=cfg, threads=1)
    assert again.already_done  # rerunning the finished command does nothing


def test_pseudo_texts_are_titles_or_the_opening_sentence():
    class Snippets:
        def snippets(self, rows, width):
            return {0: "A title | and its text. More", 1: "No title here. Then more text",
                    2: "an opening cut short witho", 4: "Title: with | two bars | text",
                    5: "Summary | First. Second", 6: "Summary | Other text", 7: "Summary | "}
    assert pseudo_texts(Snippets(), [0, 1, 2, 3, 4, 5, 6, 7]) == [
        "A title", "No title here.", "an opening cut short witho", "", "Title: with",
        "First.", "Other text", ""]  # a shared title gives way to each passage's opening (if any)


def test_pseudo_sources_parse_in_the_order_the_pool_stacks_them_with_one_spelling():
    assert pseudo_sources("both") == ["passages", "titles"]
    assert pseudo_sources("sentences+titles+passages") == ["passages", "titles", "sentences"]
    assert pseudo_sources("titles") == ["titles"]
    for value, canonical in (("titles+passages", "both"), ("both", "both"), ("sentences+titles", "titles+sentences")):
        cfg = TrainConfig(pseudo_source=value).validate()
        assert cfg.pseudo_source == canonical and cfg.run_name() == TrainConfig(pseudo_source=canonical).run_name()
    for bad in ("", "title", "titles+titles", "both+sentences", "titles,passages"):
        with pytest.raises(QliteError, match="training option pseudo_source must be 'both' or one or more"):
            TrainConfig(pseudo_source=bad).validate()


def test_pseudo_sentences_come_from_the_corpus_while_it_matches_the_cache(tmp_path, tiny_model):
    long = " ".join(f"word{i}" for i in range(100))
    texts = ["Short one. The first real sentence is here. And a second sentence comes after it! Is it a third one?",
             "No sentence end at all in this text",
             "Tiny. Bits. Only.",
             "Alpha beta gamma delta. Epsilon zeta eta theta iota.",
             "As shown by Smith et al. (2019) the effect is large. See Fig. 3 for all of the data.",
             long,
             "The first sentence is long enough. The second one goes on and on, well past the end of the snippet "
             "that the cache keeps, so that it is cut short there."]
    docs = [{"_id": f"d{i}", "title": f"Title {i}", "text": t} for i, t in enumerate(texts)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    build_cache(corpus, tmp_path / "c.h5", model_dir=tiny_model, threads=1)
    cache = Cache(tmp_path / "c.h5")
    rows = np.arange(len(texts))
    got, found = pseudo_sentences(cache, rows, seed=0)
    assert found == len(texts)
    assert got[0] in ("The first real sentence is here.", "And a second sentence comes after it!",
                      "Is it a third one?")  # "Short one." has too few words; titles are never used
    assert got[1:3] == texts[1:3]  # no sentence end, or every sentence too short: the whole text
    assert got[3] in ("Alpha beta gamma delta.", "Epsilon zeta eta theta iota.")
    assert got[4] in ("As shown by Smith et al. (2019) the effect is large.", "See Fig. 3 for all of the data.")
    assert got[5] == " ".join(long.split()[:64])  # no sentence end: cut, so it stays a query
    seen = {pseudo_sentences(cache, rows, seed)[0][0] for seed in range(20)}
    assert len(seen) == 3 and pseudo_sentences(cache, rows, seed=0)[0] == got  # drawn, but by the seed
    docs[0]["text"] = "Changed since the cache was built, so the text is not what was encoded."
    write_jsonl(corpus, docs)
    again, found = pseudo_sentences(cache, rows, seed=0)
    assert found == len(texts) - 1 and again[0] != docs[0]["text"]
    assert again[0] in cache.snippets([0], width=1 << 16)[0]  # ... from the snippet instead
    corpus.unlink()  # gone: every sentence comes from the snippet's opening words ("Title | text...")
    gone, found = pseudo_sentences(cache, rows, seed=0)
    assert found == 0 and gone[1] == texts[1] and all("Title" not in g for g in gone)
    assert gone[6] == "The first sentence is long enough."  # the snippet's cut-off last piece is dropped


@pytest.mark.parametrize("source", ["titles", "passages", "both", "sentences", "passages+titles+sentences"])
def test_pool_pseudo_queries_are_encoded_texts_or_passage_embeddings(title_task, tmp_path, source):
    cache = Cache(title_task["cache"])
    cfg = TrainConfig(pseudo_queries=50, pseudo_source=source)
    pool = build_pool(cache, cfg, title_task["queries"], title_task["qrels"], None, 1, Progress(), tmp_path / "p.h5")
    n_real = pool.counts["labelled"]
    rows = np.sort(np.random.default_rng([cfg.seed, 11]).choice(cache.count, 50, replace=False))
    passages = np.asarray(cache.embeddings[rows])
    encoder = query_encoder(cache, 1)
    titles = encode_queries(encoder, pseudo_texts(cache, rows))  # openings: the titles are blank
    sentences = encode_queries(encoder, pseudo_sentences(cache, rows, cfg.seed)[0])
    want = {"titles": titles, "passages": passages, "both": np.vstack([passages, titles]), "sentences": sentences,
            "passages+titles+sentences": np.vstack([passages, titles, sentences])}[source]
    np.testing.assert_allclose(pool.vectors[n_real:], want, atol=1e-6)
    assert pool.counts["pseudo"] == len(want)
    assert pool.counts["pseudo_titles"] == (50 if source in ("titles", "both", "passages+titles+sentences") else 0)
    assert pool.counts.get("pseudo_sentences", 0) == (50 if "sentences" in source else 0)
    assert ("sentences_from_corpus" in pool.counts) == ("sentences" in source)  # default pools: the keys of old
    assert ("passage titles" in pool.describe_text()) == (pool.counts["pseudo_titles"] > 0)
    assert ("passage sentences" in pool.describe_text()) == ("sentences" in source)
    assert not np.allclose(titles, passages, atol=1e-3) and not np.allclose(titles, sentences, atol=1e-3)


def test_teacher_top_is_flat_search_and_reports_progress_block_by_block():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((25, 16)).astype(np.float32)

    class Counting:
        def __init__(self):
            self.updates = []

        def update(self, n=1, info=None):
            self.updates.append(n)

    bar = Counting()
    top = teacher_top(embeddings, queries, 7, block_queries=10, bar=bar)
    assert top.tolist() == flat_search(embeddings, queries, 7)[1].tolist()
    assert bar.updates == [10, 10, 5]  # a long teacher search shows progress as it goes, not only at its end


def test_teacher_top_of_a_large_corpus_comes_from_the_index_rescored_exactly(monkeypatch):
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((600, 32)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries = rng.standard_normal((40, 32)).astype(np.float32)
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=8)).retrain(embeddings)
    exact = flat_search(embeddings, queries, 10)[1]
    assert pool_module.TEACHER_PROBE_FACTOR * index.default_nprobe() >= 16  # probes every list here
    # a small corpus: exact search, whatever the index would give
    monkeypatch.setattr(pool_module, "TEACHER_RERANK", 10)
    assert teacher_top(embeddings, queries, 10, index=index).tolist() == exact.tolist()
    # above the threshold: the index's best TEACHER_RERANK candidates, re-scored from the float rows
    monkeypatch.setattr(pool_module, "EXACT_TEACHER_MAX", 100)
    from_index = teacher_top(embeddings, queries, 10, block_queries=16, index=index)
    assert from_index.tolist() == index.search(queries, 10, nprobe=16, rerank=10, source=embeddings)[1].tolist()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(from_index, exact)])
    assert 0.3 < recall < 1.0  # re-scoring only 10 ADC candidates misses some of the exact top 10
    monkeypatch.setattr(pool_module, "TEACHER_RERANK", 600)  # every passage re-scored: exact again
    assert teacher_top(embeddings, queries, 10, block_queries=16, index=index).tolist() == exact.tolist()


@pytest.mark.parametrize("inputs, supervised, supervised_head, through_head", [
    ("corpus", 1.0, True, False),   # no labels: nothing would hold the head to flat search's ranking
    ("queries", 1.0, True, False),  # queries without qrels: the same
    ("qrels", 1.0, True, True),     # labels train the head, and the teacher scores through it
    ("qrels", 0.0, True, False),    # labels given, supervised loss off
    ("qrels", 1.0, False, False),   # labels that train the rows only (--supervised-rows-only)
])
def test_the_teacher_scores_through_the_head_only_when_labels_train_it(title_task, monkeypatch, inputs, supervised,
                                                                      supervised_head, through_head):
    from qlite.train import trainer as trainer_module

    seen = []
    step_gradients = trainer_module.step_gradients

    def recording(*args, **kw):
        seen.append(kw["teacher_head"])
        return step_gradients(*args, **kw)

    monkeypatch.setattr(trainer_module, "step_gradients", recording)
    path = fresh_copy(title_task, f"teacher-{inputs}-{supervised}-{supervised_head}")
    files = {"corpus": (None, None), "queries": (title_task["queries"], None),
             "qrels": (title_task["queries"], title_task["qrels"])}[inputs]
    train(path, *files, config=TrainConfig(batch_size=32, k=20, teacher_k=10, steps=3, supervised=supervised,
                                           supervised_head=supervised_head, pseudo_queries=50), threads=1)
    assert seen == [through_head] * 3


def test_distillation_alone_brings_the_index_closer_to_flat_search(title_task):
    """No labels at all: passages as queries teach the codebooks; held-out queries agree more with flat."""
    path = fresh_copy(title_task, "distill")
    result = train(path, config=TrainConfig(batch_size=32, k=40, teacher_k=20, epochs=15, lr=3e-3, nprobe=8,
                                            train_head=False), threads=1)
    assert result.dev_metric == "agreement@10" and result.dev_best > result.dev_start + 0.02, result.summary()


def test_runs_side_by_side_listed_evaluated_and_removed(title_task):
    path = fresh_copy(title_task, "runs")
    base = dict(batch_size=16, k=20, teacher_k=10, steps=6, nprobe=2, pseudo_queries=32, eval_every=0.5)
    a = train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(**base), threads=1)
    b = train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(**base, tau=0.1), threads=1)
    assert a.run != b.run and len(a.run) <= 60  # names derived from the settings
    assert {r.name for r in list_runs(path)} == {a.run, b.run} and latest_run(path) == b.run
    report = evaluate(path, title_task["queries"], title_task["qrels"], ("ndcg@10",), runs="all", threads=1)
    assert [(r.system.split()[0], r.run) for r in report.rows] == [
        ("flat", UNTRAINED), ("ivfpq", UNTRAINED), ("flat", a.run), ("ivfpq", a.run), ("flat", b.run),
        ("ivfpq", b.run)]
    with pytest.raises(QliteError, match="other settings"):  # a name is bound to its settings
        train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(**base, tau=0.2), run=a.run,
              threads=1)
    old = train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(**base, head_decay=0),
                threads=1)
    with h5py.File(old.path, "r+") as f:  # as if trained before --head-decay existed (it trained without decay)
        meta = json.loads(f.attrs["meta"])
        del meta["config"]["head_decay"]
        f.attrs["meta"] = json.dumps(meta)
    assert train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(**base, head_decay=0),
                 run=old.run, threads=1).already_done
    with pytest.raises(QliteError, match="differs: head_decay"):
        train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(**base), run=old.run, threads=1)
    remove_run(path, old.run)
    remove_run(path, b.run)
    assert latest_run(path) == a.run
    with pytest.raises(QliteError, match="no such run"):
        remove_run(path, b.run)


def test_head_decay_keeps_the_head_nearer_the_identity(title_task):
    path = fresh_copy(title_task, "decay")
    base = dict(supervised=1.0, batch_size=16, k=20, teacher_k=10, steps=24, nprobe=2, pseudo_queries=0,
                head_lr=1e-2, train_codebooks=False, train_coarse=False, eval_every=0.5, patience=20)
    distance = {}
    for decay in (0.0, 20.0):
        result = train(path, title_task["queries"], title_task["qrels"], title_task["qrels"],
                       config=TrainConfig(**base, head_decay=decay), threads=1)
        assert result.best_step > 0, result.summary()
        run = result.run
        head = load_run(Cache(path), run_dir(path, run) / "run.h5").head
        distance[decay] = float(np.linalg.norm(head[:-1] - np.eye(head.shape[1])) + np.linalg.norm(head[-1]))
    assert 0 < distance[20.0] < 0.8 * distance[0.0], distance


def _state_step(path, name):
    try:
        with h5py.File(run_dir(path, name) / "state.h5", "r") as f:
            return json.loads(f.attrs["state"])["step"]
    except (OSError, KeyError):
        return -1


@pytest.mark.parametrize("rows", [False, True])
def test_kill_9_during_training_then_rerun_ends_where_a_clean_run_ends(title_task, rows):
    args = [sys.executable, "-m", "qlite", "train", "CACHE", "--queries", str(title_task["queries"]), "--qrels",
            str(title_task["qrels"]), "--batch-size", "8", "-k", "30", "--teacher-k", "10", "--epochs", "6",
            "--nprobe", "2", "--pseudo-queries", "40", "--supervised", "1", "--checkpoint-every", "7",
            "--eval-every", "0.5", "--patience", "100", "--run", "r", "--cpu-threads", "1", "--quiet",
            "--dev-qrels", str(title_task["qrels"])]  # dev = the training titles: the best step moves
    if rows:
        args += ["--train-rows", "--refresh-every", "3"]
    clean = fresh_copy(title_task, f"clean{rows}")
    subprocess.run([str(clean) if a == "CACHE" else a for a in args], check=True, capture_output=True)

    path = fresh_copy(title_task, f"killed{rows}")
    cmd = [str(path) if a == "CACHE" else a for a in args]
    kills, seen = 0, []
    for target in (15, 60, 120):
        kills += kill_when(cmd, lambda: _state_step(path, "r") >= target)
        seen.append(_state_step(path, "r"))
        with Cache(path) as c:  # the cache always opens
            assert c.complete
    assert kills >= 2, f"training finished before it could be killed: {seen}"
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = open_retriever(Cache(path), "r"), open_retriever(Cache(clean), "r")
    np.testing.assert_array_equal(a.head, b.head)
    np.testing.assert_array_equal(a.index.coarse, b.index.coarse)
    np.testing.assert_array_equal(a.index.pq.codebooks, b.index.pq.codebooks)
    rows_all = np.arange(Cache(path).count)
    np.testing.assert_array_equal(a.index.codes_of(rows_all), b.index.codes_of(rows_all))
    np.testing.assert_array_equal(a.embeddings[rows_all], b.embeddings[rows_all])
    assert a.meta["best_step"] == b.meta["best_step"] > 0 and a.meta["dev_history"] == b.meta["dev_history"]
    if rows:
        assert not np.array_equal(a.embeddings[rows_all], Cache(path).embeddings[rows_all])  # rows did train


def test_export_folds_the_head_into_one_onnx_model(title_task, tmp_path):
    from click.testing import CliRunner

    from qlite.cli import cli
    from qlite.encoder.encoder import Encoder
    from qlite.encoder.queries import query_encoder

    path = fresh_copy(title_task, "export")
    train(path, title_task["queries"], title_task["qrels"], title_task["qrels"],
          config=TrainConfig(supervised=1.0, batch_size=16, k=20, teacher_k=10, steps=32, eval_every=0.5, nprobe=2,
                             head_lr=1e-2, pseudo_queries=16), threads=1)
    r = CliRunner().invoke(cli, ["export", str(path), "--out", str(tmp_path / "served"), "--quiet"])
    assert r.exit_code == 0, r.output
    served = tmp_path / "served"
    texts = ["a query about cells", "protein folding", ""]
    with Cache(path) as c:
        retriever = open_retriever(c)
        want = retriever.apply_head(query_encoder(c, threads=1).encode(texts))
        np.testing.assert_array_equal(np.load(served / "embeddings.npy"), c.embeddings)
        assert (served / "ids.txt").read_text().split() == [i.decode() for i in c.ids]
    got = Encoder(model_dir=served / "query_encoder", threads=1).encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(want, query_encoder(Cache(path), threads=1).encode(texts), atol=1e-4)  # head not identity
    r = CliRunner().invoke(cli, ["export", str(path), "--out", str(served)])
    assert r.exit_code == 1 and "not empty" in r.output


def test_cli_train_info_runs_and_eval_all(title_task):
    from click.testing import CliRunner

    from qlite.cli import cli

    path = fresh_copy(title_task, "cli")
    args = ["train", str(path), "--queries", str(title_task["queries"]), "--qrels", str(title_task["qrels"]),
            "--steps", "12", "--batch-size", "16", "-k", "20", "--teacher-k", "10", "--nprobe", "2",
            "--pseudo-queries", "32", "--eval-every", "0.5", "--run", "mine", "--threads", "1", "--quiet"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("trained run 'mine': 12 steps") and "kept step" in r.output
    r = CliRunner().invoke(cli, ["info", str(path)])
    assert "runs:    1 in" in r.output and "mine: done; dev ndcg@10" in r.output
    info = json.loads(CliRunner().invoke(cli, ["info", str(path), "--json"]).output)
    assert info["runs"][0]["name"] == "mine" and info["runs"][0]["settings"]["steps"] == 12
    r = CliRunner().invoke(cli, ["eval", str(path), "--queries", str(title_task["queries"]), "--qrels",
                                 str(title_task["qrels"]), "--runs", "all", "--json", "-m", "ndcg@10"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["results"]
    assert [(x["system"].split()[0], x["run"]) for x in rows] == [("flat", "untrained"), ("ivfpq", "untrained"),
                                                                   ("flat", "mine"), ("ivfpq", "mine")]
    r = CliRunner().invoke(cli, args[:-3] + ["--tau", "0"])
    assert r.exit_code == 1 and "tau must be positive" in r.output
    r = CliRunner().invoke(cli, ["runs", "rm", str(path), "mine"])
    assert r.exit_code == 0 and "removed" in r.output
    assert list_runs(path) == []


@pytest.mark.parametrize("nbits", [8, 4])
def test_export_faiss_gives_the_same_top_k_as_qlite(title_task, tmp_path, nbits):
    faiss = pytest.importorskip("faiss")
    from qlite.encoder.queries import query_encoder
    from qlite.export import export

    path = fresh_copy(title_task, f"faiss{nbits}")
    build_index(path, nlist=8, m=8, nbits=nbits, threads=1)  # OPQ on: the rotation goes into the faiss chain
    train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(
        supervised=1.0, batch_size=16, k=20, teacher_k=10, steps=16, eval_every=0.5, nprobe=2, head_lr=1e-2,
        pseudo_queries=16), threads=1)
    export(path, tmp_path / "served", faiss_index=True)
    index = faiss.read_index(str(tmp_path / "served" / "index.faiss"))
    with Cache(path) as c:
        retriever = open_retriever(c)
        texts = [d["title"] for d in demo_docs()[:100]]
        q = retriever.apply_head(query_encoder(c, threads=1).encode(texts))  # what the exported encoder gives
        for nprobe in (2, 8):
            faiss.extract_index_ivf(index).nprobe = nprobe
            _, got = index.search(q, 10)
            scores, want = retriever.index.search(q, 10, nprobe=nprobe)
            # the same rows in the same order; faiss sums in another order, so exact ties may swap places
            same = (got == want).all(1)
            assert same.mean() > 0.95
            for i in np.flatnonzero(~same):
                assert set(got[i]) <= set(want[i]) | set(retriever.index.search(q[i:i + 1], 20, nprobe=nprobe)[1][0])
                swapped = got[i] != want[i]
                assert np.ptp(scores[i][swapped]) < 1e-5  # only rows scored alike changed places


def test_plot_log_writes_a_png(title_task, tmp_path):
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    from qlite.cli import cli

    path = fresh_copy(title_task, "plot")
    train(path, title_task["queries"], title_task["qrels"], config=TrainConfig(
        batch_size=16, k=20, teacher_k=10, steps=24, eval_every=0.5, nprobe=2, pseudo_queries=16), run="p",
        threads=1)
    r = CliRunner().invoke(cli, ["plot-log", str(path), "--out", str(tmp_path / "log.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(cli, ["plot-log", str(path), "--run", "nope"])
    assert r.exit_code == 1 and "no training log" in r.output
