from click.testing import CliRunner

from qlite.cli import cli

from .conftest import demo_docs, write_jsonl


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_build_info_eval_roundtrip(tmp_path, tiny_model):
    docs = demo_docs(30)
    corpus = write_jsonl(tmp_path / "corpus.jsonl.gz", docs, gz=True)
    # a passage's own text as the query: flat search must rank that passage first (nDCG@10 exactly 1)
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": f"{docs[3]['title']} {docs[3]['text']}"},
                                                       {"_id": "q2", "text": f"{docs[7]['title']} {docs[7]['text']}"}])
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq1\t{docs[3]['_id']}\t1\nq2\t{docs[7]['_id']}\t1\n")

    r = run("build-cache", corpus, "--model", tiny_model, "--quiet", "--cpu-threads", 1)
    assert r.exit_code == 0, r.output
    out = tmp_path / "corpus.qlite.h5"  # default name next to the corpus
    assert out.exists() and "encoded 30 passages" in r.output

    r = run("info", out)
    assert r.exit_code == 0 and "state:   complete" in r.output and "30 x 32 float32" in r.output

    r = run("eval", out, "--queries", queries, "--qrels", qrels, "-m", "ndcg@10,recall@5")
    assert r.exit_code == 0, r.output
    head, flat = r.output.strip().splitlines()
    assert head.split() == ["system", "run", "queries", "ndcg@10", "recall@5"]
    assert flat.split()[:3] == ["flat", "untrained", "2"]
    assert float(flat.split()[3]) == 1.0 and float(flat.split()[4]) == 1.0


def test_errors_are_one_line_and_nonzero(tmp_path, tiny_model):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"_id": "a", "text": "ok"}\n{"_id": "a", "text": "again"}\n')
    r = run("build-cache", bad, "--model", tiny_model, "--quiet")
    assert r.exit_code == 1
    assert r.output.strip() == f"Error: {bad}:2: duplicate _id 'a' (first seen on line 1)"

    r = run("info", tmp_path / "missing.h5")
    assert r.exit_code == 1 and "no such cache file" in r.output

    r = run("eval", tmp_path / "missing.h5", "--queries", bad, "--qrels", bad, "-m", "ndcg")
    assert r.exit_code == 1 and "Error:" in r.output


def test_help_lists_commands_and_every_option_has_help():
    import click

    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("build-cache", "info", "index", "train", "search", "eval", "runs", "export", "merge-caches",
                "plot-log", "demo"):
        assert f"  {cmd} " in r.output
    sys_path = __import__("sys").path
    sys_path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    from make_cli_docs import commands

    missing = [f"{' '.join(path)} {p.opts[0]}" for path, cmd in commands(cli) for p in cmd.params
               if isinstance(p, click.Option) and not p.help]
    assert missing == []
    r = run("train", "--help")
    assert r.exit_code == 0 and "--cpu-threads, --threads" in r.output  # pyserini's name works too


def test_cli_reference_is_up_to_date():
    """docs/cli.md is generated from --help: regenerate it with `python tools/make_cli_docs.py`."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    __import__("sys").path.insert(0, str(root / "tools"))
    from make_cli_docs import render

    assert (root / "docs" / "cli.md").read_text(encoding="utf-8") == render(), "run python tools/make_cli_docs.py"


def test_index_build_search_trec_and_eval_columns(tmp_path, tiny_model):
    docs = demo_docs(300)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": f"q{i}", "text": docs[i]["title"]} for i in range(0, 60, 6)])
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{docs[i]['_id']}\t1\n" for i in range(0, 60, 6)))
    assert run("build-cache", corpus, "--model", tiny_model, "--quiet").exit_code == 0
    cache = tmp_path / "corpus.qlite.h5"

    r = run("search", cache, "anything")
    assert r.exit_code == 1 and "qlite index build" in r.output  # no index yet: says how to make one

    r = run("index", "build", cache, "--nlist", 4, "--m", 8, "--niter", 4, "--quiet")
    assert r.exit_code == 0, r.output
    assert "nlist 4, M 8 x 8 bit, OPQ" in r.output and "16x smaller" in r.output
    assert (tmp_path / "corpus.qlite.ivfpq.h5").exists()
    r = run("index", "build", cache, "--nlist", 4, "--nbits", 4, "--niter", 4, "--out", tmp_path / "four.h5", "--quiet")
    assert r.exit_code == 0 and " x 4 bit, OPQ" in r.output and "64x smaller" in r.output  # twice M: the same bytes

    r = run("search", cache, docs[6]["title"], "-k", 3)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1"
    titles = {d["_id"]: d["title"] for d in docs}
    for line in lines:  # rank, score, id, then the snippet kept in the cache
        assert titles[line.split()[2]][:20] in line

    run_file = tmp_path / "run.trec"
    r = run("search", cache, "--queries", queries, "-k", 5, "--out", run_file, "--nprobe", 4)
    assert r.exit_code == 0 and "50 results for 10 queries" in r.output
    first = run_file.read_text().splitlines()[0].split()
    assert first[0] == "q0" and first[1] == "Q0" and first[3] == "1" and first[5] == "qlite"

    r = run("eval", cache, "--queries", queries, "--qrels", qrels, "--nprobe", 4, "-m", "recall@10")
    assert r.exit_code == 0, r.output
    names = [line.split()[0] for line in r.output.strip().splitlines()[1:]]
    assert names == ["flat", "ivfpq"]

    for bad, msg in [(["--m", 7], "--m 7 must divide"), (["--nlist", 9999], "--nlist 9999")]:
        r = run("index", "build", cache, *bad, "--quiet")
        assert r.exit_code == 1 and msg in r.output
    r = run("search", cache, "x", "-k", 0)
    assert r.exit_code == 2 and "Invalid value for '-k'" in r.output
    r = run("train", cache, "--pseudo-source", "titles+title")
    assert r.exit_code == 2 and r.output.splitlines()[-1] == (
        "Error: Invalid value for '--pseudo-source': must be 'both' or one or more of passages, titles, sentences "
        "joined by '+' (got 'titles+title')")
