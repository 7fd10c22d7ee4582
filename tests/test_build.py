import subprocess
import sys

import h5py
import numpy as np
import pytest

from qlite.build import build_cache
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
