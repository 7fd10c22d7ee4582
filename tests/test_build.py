import subprocess
import sys

import h5py
import numpy as np
import pytest

from qlite.build_cache import build_cache
from qlite.cache import Cache
from qlite.encoder.encoder import Encoder
from qlite.encoder.model_dir import resolve_model
from qlite.errors import QliteError

from .conftest import demo_docs, kill_when, write_jsonl


def test_build_matches_direct_encoding_and_records_metadata(tmp_path, tiny_model, small_corpus):
    out = tmp_path / "c.h5"
    res = build_cache(small_corpus, out, model_dir=tiny_model, chunk_rows=16, batch_size=4)
    assert res.rows == res.encoded == 40 and not res.already_complete
    with Cache(out) as c:
        assert c.complete and c.rows_done == 40 and c.embeddings.shape == (40, 32)
        assert isinstance(c.embeddings, np.memmap) and not c.embeddings.flags.writeable
        docs = demo_docs(40)
        assert [c.id_of(i) for i in range(40)] == [d["_id"] for d in docs]
        texts = [(d["title"] + " " + d["text"]).strip() for d in docs]
        want = Encoder(resolve_model(tiny_model), threads=1).encode(texts)
        np.testing.assert_allclose(c.embeddings, want, atol=1e-5)
        a = c.attrs
        assert a["model_name"] == "tiny-bert" and a["dim"] == 32 and a["model_pooling"] == "mean"
        assert a["model_normalize"] and a["max_length"] == 128 and a["count"] == 40
        assert len(a["corpus_sha256"]) == 64 and a["corpus_path"].endswith("corpus.jsonl")
        assert list(c.rows_of([docs[5]["_id"], "nope", docs[0]["_id"]])) == [5, -1, 0]
        assert list(c.rows_of([docs[5]["_id"] + "x" * 40])) == [-1]  # never truncated into a match
    with h5py.File(out, "r") as f:  # contiguous, so it can be memory-mapped at its offset
        assert f["embeddings"].chunks is None and f["embeddings"].id.get_offset() is not None


def test_complete_cache_is_left_alone_unless_forced(tmp_path, tiny_model, small_corpus):
    out = tmp_path / "c.h5"
    build_cache(small_corpus, out, model_dir=tiny_model)
    mtime = out.stat().st_mtime_ns
    res = build_cache(small_corpus, out, model_dir=tiny_model)
    assert res.already_complete and "already complete" in res.summary() and out.stat().st_mtime_ns == mtime
    res = build_cache(small_corpus, out, model_dir=tiny_model, force=True)
    assert res.encoded == 40


def test_other_corpus_or_model_is_refused(tmp_path, tiny_model, small_corpus, model_cache_dir):
    out = tmp_path / "c.h5"
    build_cache(small_corpus, out, model_dir=tiny_model, chunk_rows=8)
    with Cache(out, writable=True) as c:
        c.progress[0] = 8  # pretend it was interrupted
    other = write_jsonl(tmp_path / "other.jsonl", demo_docs(41)[1:])
    with pytest.raises(QliteError, match="another corpus"):
        build_cache(other, out, model_dir=tiny_model)
    with pytest.raises(QliteError, match="another model or max length"):
        build_cache(small_corpus, out, model_dir=tiny_model, max_length=64)
    res = build_cache(small_corpus, out, model_dir=tiny_model)
    assert res.resumed_from == 8 and res.encoded == 32


def test_bad_input_leaves_no_cache(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "x"}\n{"_id": "b" "text": "y"}\n')
    with pytest.raises(QliteError, match=r"bad.jsonl:2: malformed JSON"):
        build_cache(bad, tmp_path / "c.h5", model_dir=tiny_model)
    assert not (tmp_path / "c.h5").exists()


def test_not_a_cache_is_not_overwritten_silently(tmp_path, tiny_model, small_corpus):
    out = tmp_path / "c.h5"
    out.write_text("precious")
    with pytest.raises(QliteError, match="not a usable cache"):
        build_cache(small_corpus, out, model_dir=tiny_model)
    assert out.read_text() == "precious"


def _rows_done(path):
    try:
        with Cache(path) as c:
            return c.rows_done
    except QliteError:
        return -1  # not created yet


def test_kill_9_then_rerun_resumes_to_identical_embeddings(tmp_path, tiny_model):
    """SIGKILL a real `qlite build-cache` several times; every partial file opens; the end equals a clean run."""
    n = 300
    corpus = write_jsonl(tmp_path / "corpus.jsonl", demo_docs(n))
    args = [sys.executable, "-m", "qlite", "build-cache", str(corpus), "--model", str(tiny_model),
            "--chunk-size", "2", "--batch-size", "2", "--cpu-threads", "1", "--quiet"]
    clean = tmp_path / "clean.h5"
    subprocess.run(args + ["--out", str(clean)], check=True, capture_output=True)

    out = tmp_path / "killed.h5"
    kills, seen = 0, []
    for target in (20, 90, 180):
        kills += kill_when(args + ["--out", str(out)], lambda: _rows_done(out) >= target, timeout=60)
        done = _rows_done(out)
        seen.append(done)
        with Cache(out) as c:  # never unopenable, never claims more than it has
            assert c.count == n
            assert c.complete == (done == n)
        info = subprocess.run([sys.executable, "-m", "qlite", "info", str(out)], capture_output=True, text=True)
        assert info.returncode == 0
        assert ("partial: " in info.stdout) == (done < n)
    assert kills >= 2, f"the build finished before it could be killed: {seen}"
    assert seen == sorted(seen)

    res = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resumed at row" in res.stdout or seen[-1] == n
    with Cache(out) as a, Cache(clean) as b:
        assert a.complete and b.complete
        np.testing.assert_array_equal(a.embeddings, b.embeddings)


def test_shards_merge_into_a_cache_identical_to_a_single_build(tmp_path, tiny_model):
    from click.testing import CliRunner

    from qlite.cli import cli

    corpus = write_jsonl(tmp_path / "corpus.jsonl", demo_docs(70))
    single = tmp_path / "single.h5"
    build_cache(corpus, single, model_dir=tiny_model, chunk_rows=8, batch_size=4, threads=1)
    shards = []
    for i in range(3):
        out = tmp_path / f"shard{i}.h5"
        r = CliRunner().invoke(cli, ["build-cache", str(corpus), "--model", str(tiny_model), "--shard", f"{i}/3",
                                     "--out", str(out), "--chunk-size", "8", "--batch-size", "4", "--threads", "1",
                                     "--quiet"])
        assert r.exit_code == 0 and r.output.startswith(f"shard {i}/3: encoded"), r.output
        shards.append(out)
    assert sum(Cache(s).count for s in shards) == 70 and Cache(shards[1]).corpus_rows()[:3].tolist() == [8, 9, 10]
    r = CliRunner().invoke(cli, ["merge-caches", *map(str, shards[:2]), "--out", str(tmp_path / "m.h5")])
    assert r.exit_code == 1 and "missing shards: 2/3" in r.output and not (tmp_path / "m.h5").exists()
    merged = tmp_path / "merged.h5"
    r = CliRunner().invoke(cli, ["merge-caches", *map(str, reversed(shards)), "--out", str(merged), "--quiet"])
    assert r.exit_code == 0, r.output
    with Cache(merged) as m, Cache(single) as s:
        assert m.complete and m.count == 70
        np.testing.assert_array_equal(m.embeddings, s.embeddings)  # bit for bit: the same chunks, the same batches
        np.testing.assert_array_equal(m.ids, s.ids)
        np.testing.assert_array_equal(m.text_hashes(), s.text_hashes())
        assert m.snippets([3, 60]) == s.snippets([3, 60])
        assert m.attrs["corpus_sha256"] == s.attrs["corpus_sha256"]


def test_update_encodes_only_changed_passages_and_brings_index_and_runs_along(tmp_path, tiny_model):
    from qlite.index.build import build_index, open_index
    from qlite.runs import open_retriever
    from qlite.search import search
    from qlite.train.config import TrainConfig
    from qlite.train.trainer import train

    docs = demo_docs(60)
    v1 = write_jsonl(tmp_path / "v1.jsonl", docs[:50])
    cache = tmp_path / "c.h5"
    build_cache(v1, cache, model_dir=tiny_model, chunk_rows=16, threads=1)
    build_index(cache, nlist=4, m=8, nbits=5, opq=False, threads=1)
    train(cache, config=TrainConfig(steps=4, batch_size=8, k=10, teacher_k=5, pseudo_queries=20), run="r",
          threads=1)
    old_index = open_index(Cache(cache))
    old_rows = {Cache(cache).id_of(i): i for i in range(50)}
    # v2: passages 3 and 7 edited, 10-12 removed, 50-59 added, the rest unchanged (and re-ordered a little)
    v2_docs = [({**d, "text": d["text"] + " (revised)"} if i in (3, 7) else d) for i, d in enumerate(docs[:50])
               if i not in (10, 11, 12)] + docs[50:]
    v2_docs[0], v2_docs[1] = v2_docs[1], v2_docs[0]
    v2 = write_jsonl(tmp_path / "v2.jsonl", v2_docs)
    res = build_cache(v2, cache, model_dir=tiny_model, update=True, threads=1)
    assert res.changes == {"unchanged": 45, "edited": 2, "added": 10, "removed": 3} and res.encoded == 12
    assert "updated: 45 unchanged, 2 edited, 10 added, 3 removed" in res.summary()
    from qlite.info import cache_info, format_info

    info = cache_info(cache)  # qlite info says what the last update changed
    assert info["last_update"] == {"previous_rows": 50, "unchanged": 45, "edited": 2, "added": 10, "removed": 3}
    assert "update:  from 50 rows: 45 unchanged, 2 edited, 10 added, 3 removed" in format_info(info)
    fresh = tmp_path / "fresh.h5"
    build_cache(v2, fresh, model_dir=tiny_model, chunk_rows=16, threads=1)
    assert cache_info(fresh)["last_update"] is None  # a full build is no update
    with Cache(cache) as c, Cache(fresh) as f:
        np.testing.assert_array_equal(c.ids, f.ids)
        np.testing.assert_allclose(c.embeddings, f.embeddings, atol=1e-6)  # encoded in other batches: ~1 ulp
        assert c.attrs["corpus_sha256"] == f.attrs["corpus_sha256"] and c.complete
        assert c.snippets(range(57)) == f.snippets(range(57))
        unchanged = [i for i, d in enumerate(v2_docs) if d["_id"] in old_rows and "(revised)" not in d["text"]]
        index = open_index(c)  # the base index followed: unchanged passages kept their codes
        np.testing.assert_array_equal(index.codes_of(unchanged),
                                      old_index.codes_of([old_rows[v2_docs[i]["_id"]] for i in unchanged]))
        assert index.ntotal == 57
        run = open_retriever(c, "r")  # so did the run
        assert run.index.ntotal == 57
    hits = search(cache, {"q": docs[55]["text"]}, k=3, run="r", threads=1)["q"]
    assert len(hits) == 3
    again = build_cache(v2, cache, model_dir=tiny_model, update=True, threads=1)
    assert again.already_complete


def _pending_rows(path):
    from qlite.build_cache import update_path

    try:
        with Cache(update_path(path)) as c:
            return c.rows_done
    except QliteError:
        return -1


def test_kill_9_during_update_then_rerun_ends_where_a_clean_update_ends(tmp_path, tiny_model):
    docs = demo_docs(300)
    v1 = write_jsonl(tmp_path / "v1.jsonl", docs[:200])
    v2 = write_jsonl(tmp_path / "v2.jsonl", [{**d, "text": d["text"] + " (v2)"} if i % 3 == 0 else d
                                             for i, d in enumerate(docs[50:])])  # 100 added, 84 edited
    args = [sys.executable, "-m", "qlite", "build-cache", str(v2), "--model", str(tiny_model), "--update",
            "--cpu-threads", "1", "--quiet", "--out"]
    paths = {}
    for name in ("clean", "killed"):
        paths[name] = tmp_path / f"{name}.h5"
        build_cache(v1, paths[name], model_dir=tiny_model, chunk_rows=2, batch_size=2, threads=1)
    subprocess.run(args + [str(paths["clean"])], check=True, capture_output=True)
    kills = 0
    for target in (20, 120):
        kills += kill_when(args + [str(paths["killed"])], lambda: _pending_rows(paths["killed"]) >= target)
        with Cache(paths["killed"]) as c:  # the old cache stays whole until the new one replaces it
            assert c.complete and c.count == 200
    assert kills >= 1
    r = subprocess.run(args + [str(paths["killed"])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with Cache(paths["killed"]) as a, Cache(paths["clean"]) as b:
        assert a.count == 250 and a.complete
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        np.testing.assert_array_equal(a.ids, b.ids)
