import gzip

import pytest

from qlite.beir import load_qrels, load_queries, passage_text, scan_corpus
from qlite.errors import InputError


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("lines, line, message", [
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', 2, "malformed JSON"),
    (b'{"_id": "a", "text": "x"}\n\n{"text": "y"}\n', 3, "missing field '_id'"),
    (b'{"_id": "a"}\n', 1, "missing field 'text'"),
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n', 3, "duplicate _id 'a' (first seen on line 1)"),
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "caf\xe9"}\n', 2, "not valid UTF-8"),
    (b'[1, 2]\n', 1, "expected a JSON object"),
    (b'{"_id": "a", "text": 5}\n', 1, "text must be a string"),
    (b'{"_id": "", "text": "x"}\n', 1, "_id must be a non-empty string"),
])
def test_bad_corpus_names_file_and_line(tmp_path, lines, line, message):
    p = write(tmp_path, "corpus.jsonl", lines)
    with pytest.raises(InputError) as exc:
        scan_corpus(p)
    assert str(exc.value).startswith(f"{p}:{line}: ")
    assert message in str(exc.value)


def test_empty_corpus(tmp_path):
    p = write(tmp_path, "corpus.jsonl", b"\n\n")
    with pytest.raises(InputError, match="empty corpus"):
        scan_corpus(p)


def test_scan_gz_counts_ids_and_hashes_decompressed_bytes(tmp_path):
    raw = b'{"_id": "d1", "title": "T", "text": "x"}\n{"_id": 7, "text": ""}\n'
    plain = write(tmp_path, "c.jsonl", raw)
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(raw)
    a, b = scan_corpus(plain), scan_corpus(gz)
    assert a.count == b.count == 2
    assert a.sha256 == b.sha256  # the same corpus, compressed or not
    assert [i.decode() for i in a.ids] == ["d1", "7"]


def test_passage_text_is_title_space_text():
    assert passage_text({"title": "Vitamin D", "text": "helps."}) == "Vitamin D helps."
    assert passage_text({"text": " only text "}) == "only text"
    assert passage_text({"title": "", "text": ""}) == ""


def test_qrels_with_and_without_header(tmp_path):
    p = write(tmp_path, "q.tsv", b"query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t2\n2\td3\t0\n")
    assert load_qrels(p) == {"1": {"d1": 1, "d2": 2}, "2": {"d3": 0}}
    p = write(tmp_path, "q2.tsv", b"1\td1\t1\n")
    assert load_qrels(p) == {"1": {"d1": 1}}
    p = write(tmp_path, "bad.tsv", b"query-id\tcorpus-id\tscore\n1\td1\n")
    with pytest.raises(InputError, match=r"bad.tsv:2: expected 3 tab-separated"):
        load_qrels(p)
    p = write(tmp_path, "bad2.tsv", b"1\td1\thigh\n")
    with pytest.raises(InputError, match=r"bad2.tsv:1: score 'high'"):
        load_qrels(p)


def test_queries(tmp_path):
    p = write(tmp_path, "q.jsonl", b'{"_id": "1", "text": "what?"}\n{"_id": "2", "text": "why"}\n')
    assert load_queries(p) == {"1": "what?", "2": "why"}
    p = write(tmp_path, "dup.jsonl", b'{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n')
    with pytest.raises(InputError, match="dup.jsonl:2: duplicate _id"):
        load_queries(p)
