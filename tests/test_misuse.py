"""Reliability under misuse: two writers on one cache, damaged files, a full disk."""
import errno
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from qlite.build_cache import build_cache
from qlite.cli import cli
from qlite.index.build import build_index
from qlite.lock import cache_lock
from qlite.train.config import TrainConfig
from qlite.train.trainer import train

from .conftest import demo_docs, write_jsonl


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("misuse")
    docs = demo_docs(80)
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    queries = write_jsonl(root / "queries.jsonl", [{"_id": f"q{i}", "text": d["title"]} for i, d in enumerate(docs)])
    cache = root / "c.h5"
    build_cache(corpus, cache, model_dir=tiny_model, threads=1)
    build_index(cache, nlist=4, m=8, nbits=5, opq=False, threads=1)
    train(cache, config=TrainConfig(steps=3, batch_size=8, k=10, teacher_k=5, pseudo_queries=16), run="r", threads=1)
    return {"root": root, "corpus": corpus, "cache": cache, "queries": queries, "model": tiny_model}


def one_line_error(result, *needles):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_second_writer_is_refused_while_the_first_holds_the_cache(built):
    with cache_lock(built["cache"], "qlite train (test)"):
        for args in (["index", "build", str(built["cache"]), "--quiet"],
                     ["train", str(built["cache"]), "--steps", "2", "--quiet"],
                     ["build-cache", str(built["corpus"]), "--out", str(built["cache"]), "--model",
                      str(built["model"]), "--update", "--quiet"]):
            r = subprocess.run([sys.executable, "-m", "qlite", *args], capture_output=True, text=True)
            assert r.returncode == 1, r.stderr
            assert r.stderr.strip().splitlines() == [f"Error: {built['cache']} is in use by pid "
                                                     f"{__import__('os').getpid()} (qlite train (test)); wait for "
                                                     "it to finish (or stop it) and run this again"]
        # readers take no lock
        r = CliRunner().invoke(cli, ["search", str(built["cache"]), "anything", "-k", "2"])
        assert r.exit_code == 0, r.output
    # a holder that died (here: released) leaves nothing stuck
    r = subprocess.run([sys.executable, "-m", "qlite", "runs", "rm", str(built["cache"]), "nope"],
                       capture_output=True, text=True)
    assert "no such run" in r.stderr


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_files_give_one_line_errors_naming_the_file(built, tmp_path, damage):
    def spoil(path):
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3] if damage == "truncate" else b"\x89HDF\r\n" + bytes(range(256)) * 40)

    root = tmp_path / "copy"
    shutil.copytree(built["root"], root)
    cache, index, run = root / "c.h5", root / "c.ivfpq.h5", root / "c.runs" / "r" / "run.h5"
    spoil(run)
    one_line_error(CliRunner().invoke(cli, ["search", str(cache), "x", "--run", "r"]), str(run))
    spoil(index)
    one_line_error(CliRunner().invoke(cli, ["search", str(cache), "x", "--run", "untrained"]), str(index))
    spoil(cache)
    for args in (["info", str(cache)], ["search", str(cache), "x"], ["index", "build", str(cache), "--quiet"]):
        one_line_error(CliRunner().invoke(cli, args), str(cache))


def test_a_full_disk_is_one_line_and_the_same_command_then_resumes(built, tmp_path, monkeypatch):
    """ENOSPC injected where the cache reserves its blocks (the first write of a build)."""
    import os

    real = os.posix_fallocate
    calls = {"n": 0}

    def full(fd, offset, length):
        calls["n"] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "new.h5"
    args = ["build-cache", str(built["corpus"]), "--out", str(out), "--model", str(built["model"]), "--quiet"]
    monkeypatch.setattr(os, "posix_fallocate", full)
    r = CliRunner().invoke(cli, args)
    one_line_error(r, "no space left on the device", "run the same command again")
    assert calls["n"] and not out.exists() and not list(tmp_path.glob("*.tmp"))  # nothing half-written left
    monkeypatch.setattr(os, "posix_fallocate", real)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "encoded 80 passages" in r.output, r.output


def test_a_full_disk_on_a_real_small_filesystem(built, tmp_path):
    """A tmpfs of 1 MB fills while the cache reserves its space; once it grows, the same command completes."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        big = write_jsonl(tmp_path / "big.jsonl", [{**d, "_id": f"{d['_id']}-{i}"} for i in range(20)
                                                   for d in demo_docs()])  # 8,000 passages: ~2.5 MB of cache
        args = [sys.executable, "-m", "qlite", "build-cache", str(big), "--out", str(mnt / "c.h5"), "--model",
                str(built["model"]), "--quiet", "--threads", "1"]
        r = subprocess.run(args, capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.startswith("Error: no space left on the device"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (mnt / "c.h5").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        r = subprocess.run(args, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
