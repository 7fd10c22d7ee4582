import gzip
import io
import json
import random
import re

import pytest

from qlite import beir
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
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n', 3,
     "duplicate _id 'a' (first seen on line 1)"),
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "caf\xe9"}\n', 2, "not valid UTF-8"),
    (b'[1, 2]\n', 1, "expected a JSON object"),
    (b'{"_id": "a", "text": 5}\n', 1, "text must be a string"),
    (b'{"_id": "", "text": "x"}\n', 1, "_id must be a non-empty string (got an empty string)"),
    # wrong JSON types
    (b'{"_id": "a", "text": ["x"]}\n', 1, "text must be a string (got an array)"),
    (b'{"_id": "a", "text": true}\n', 1, "text must be a string (got a boolean)"),
    (b'{"_id": "a", "title": 3, "text": "x"}\n', 1, "title must be a string (got a number)"),
    (b'{"_id": ["a"], "text": "x"}\n', 1, "_id must be a non-empty string (got an array)"),
    (b'{"_id": {"a": 1}, "text": "x"}\n', 1, "_id must be a non-empty string (got an object)"),
    (b'{"_id": true, "text": "x"}\n', 1, "_id must be a non-empty string (got a boolean)"),
    (b'{"_id": null, "text": "x"}\n', 1, "_id must be a non-empty string (got null)"),
    (b'{"_id": 1.5, "text": "x"}\n', 1,
     "_id 1.5 is a number with a fraction or exponent; write the id as a JSON string"),
    (b'{"_id": 1.0, "text": "x"}\n', 1, "_id 1.0 is a number with a fraction or exponent"),
    (b'{"_id": NaN, "text": "x"}\n', 1, "_id nan is a number with a fraction"),
    (b'"just a string"\n', 1, "expected a JSON object, got a string"),
    (b'null\n', 1, "expected a JSON object, got null"),
    # JSON that Python's parser gives up on in other ways than a syntax error
    (b'{"_id": 1' + b"1" * 5000 + b', "text": "x"}\n', 1, "malformed JSON (Exceeds the limit"),
    (b'{"_id": "a", "text": "x", "m": ' + b"[" * 100000 + b"]" * 100000 + b'}\n', 1,
     "malformed JSON (nested too deeply)"),
    (b'{"_id": "a", "text": "x"}\n\xef\xbb\xbf{"_id": "b", "text": "y"}\n', 2, "malformed JSON (Unexpected UTF-8 BOM"),
    (b'{"_id": "a", "text": "x \\ud800 y"}\n', 1, "text contains an unpaired surrogate (\\ud800)"),
    (b'{"_id": "a\\udc00", "text": "x"}\n', 1, "_id contains an unpaired surrogate (\\udc00)"),
    # bytes that are no text
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y\x00"}\n', 2, "NUL byte at byte 23"),
    (b'{"_id": "a", "text": "x"}\n\x00\x00\x00\x00\n', 2, "NUL byte at byte 0"),
    ('{"_id": "a", "text": "x"}\n'.encode("utf-16"), 1, "UTF-16 text"),
    (gzip.compress(b'{"_id": "a", "text": "x"}\n'), 1, "gzip-compressed data in a file not named *.gz"),
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "\xff"}\n', 2, "not valid UTF-8 (byte 22)"),
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "\xc3"}\n', 2, "not valid UTF-8"),
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
    # a first line with a word as its score is a header, whatever its names
    p = write(tmp_path, "q3.tsv", b"1\td1\thigh\n2\td2\t1\n")
    assert load_qrels(p) == {"2": {"d2": 1}}


def test_queries(tmp_path):
    p = write(tmp_path, "q.jsonl", b'{"_id": "1", "text": "what?"}\n{"_id": "2", "text": "why"}\n')
    assert load_queries(p) == {"1": "what?", "2": "why"}
    p = write(tmp_path, "dup.jsonl", b'{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n')
    with pytest.raises(InputError, match="dup.jsonl:2: duplicate _id"):
        load_queries(p)


WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u2028", "\u3000"]


@pytest.mark.parametrize("ch", WHITESPACE)
def test_ids_with_whitespace_are_refused(tmp_path, ch):
    assert ch.isspace()
    bad_id = json.dumps("d" + ch + "1")  # JSON-escaped where it must be, so only the id is wrong
    data = f'{{"_id": "ok", "text": "x"}}\n{{"_id": {bad_id}, "text": "y"}}\n'.encode()
    corpus = write(tmp_path, "corpus.jsonl", data)
    queries = write(tmp_path, "queries.jsonl", data)
    for load, p in ((scan_corpus, corpus), (load_queries, queries)):
        with pytest.raises(InputError) as exc:
            load(p)
        msg = str(exc.value)
        assert msg.startswith(f"{p}:2: _id ")
        assert f"contains whitespace (U+{ord(ch):04X} at position 1)" in msg
        assert len(msg.splitlines()) == 1  # the id is shown escaped


def test_id_with_nul_character_is_refused(tmp_path):
    # numpy's fixed-width bytes drop trailing NULs, so "a\0" would silently become "a"
    p = write(tmp_path, "corpus.jsonl", b'{"_id": "a\\u0000", "text": "x"}\n')
    with pytest.raises(InputError, match=r"corpus.jsonl:1: _id 'a\\x00' contains a NUL character"):
        scan_corpus(p)


def test_overlong_id_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(beir, "MAX_ID_BYTES", 16)
    ok = write(tmp_path, "ok.jsonl", b'{"_id": "' + "\u00e9".encode() * 8 + b'", "text": "x"}\n')  # 16 bytes
    assert scan_corpus(ok).count == 1
    p = write(tmp_path, "c.jsonl", b'{"_id": "a", "text": "x"}\n{"_id": "' + b"b" * 17 + b'", "text": "x"}\n')
    with pytest.raises(InputError, match=r"c.jsonl:2: _id is longer than 16 bytes"):
        scan_corpus(p)


def test_integer_ids_are_their_decimal_spelling(tmp_path):
    p = write(tmp_path, "q.jsonl", b'{"_id": 12, "text": "a"}\n{"_id": -3, "text": "b"}\n'
                                   b'{"_id": 123456789012345678901234567890, "text": "c"}\n')
    assert load_queries(p) == {"12": "a", "-3": "b", "123456789012345678901234567890": "c"}


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    raw = b'{"_id": "d1", "text": "x"}\r\n\r\n   \r\n{"_id": "d2", "title": "t", "text": "y"}\r\n'
    plain = write(tmp_path, "plain.jsonl", raw.replace(b"\r\n", b"\n"))
    bom = write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + raw)
    scan = scan_corpus(bom)
    assert [i.decode() for i in scan.ids] == ["d1", "d2"]
    assert scan.count == scan_corpus(plain).count == 2
    assert [d for _, d in beir.iter_corpus(bom)] == [d for _, d in beir.iter_corpus(plain)]
    q = write(tmp_path, "q.jsonl", b'\xef\xbb\xbf{"_id": "1", "text": "what?"}\r\n')
    assert load_queries(q) == {"1": "what?"}
    qr = write(tmp_path, "qrels.tsv", b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\n1\td1\t1\r\n")
    assert load_qrels(qr) == {"1": {"d1": 1}}
    # a BOM before the first line is skipped and the line numbers still count it as line 1
    bad = write(tmp_path, "bad.jsonl", b'\xef\xbb\xbf{"_id": "a"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: missing field 'text'"):
        scan_corpus(bad)


def gz_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def test_truncated_and_corrupt_gzip_are_one_line_errors(tmp_path):
    rng = random.Random(3)
    lines = [json.dumps({"_id": f"d{i}", "text": "".join(rng.choice("abcdefgh ") for _ in range(50))}) + "\n"
             for i in range(2000)]
    full = gz_bytes("".join(lines).encode())
    assert scan_corpus(write(tmp_path, "ok.jsonl.gz", full)).count == 2000
    cut = write(tmp_path, "cut.jsonl.gz", full[: len(full) // 2])
    with pytest.raises(InputError) as exc:
        scan_corpus(cut)
    msg = str(exc.value)
    assert re.fullmatch(re.escape(str(cut)) + r":\d+: compressed data ends early \(truncated file\?\)", msg)
    assert 1 < int(msg.split(":")[-2]) < 2000  # the line being read when the data ran out
    crc = bytearray(full)
    crc[-8] ^= 0xFF  # the CRC-32 of the trailer: every line reads, the end does not check out
    p = write(tmp_path, "crc.jsonl.gz", bytes(crc))
    with pytest.raises(InputError, match=r"crc.jsonl.gz:2001: not valid gzip data \(CRC check failed"):
        scan_corpus(p)
    block = bytearray(full)
    block[10] = 0x07  # the first deflate block header: final block of the reserved type 3
    p = write(tmp_path, "block.jsonl.gz", bytes(block))
    with pytest.raises(InputError, match=r"block.jsonl.gz:1: corrupt compressed data \(Error -3 .*invalid block type"):
        scan_corpus(p)
    p = write(tmp_path, "plain.jsonl.gz", b'{"_id": "a", "text": "x"}\n')
    with pytest.raises(InputError, match=r"plain.jsonl.gz:1: not valid gzip data \(Not a gzipped file"):
        scan_corpus(p)
    for name in ("empty.tsv.gz", "header.tsv.gz"):
        p = write(tmp_path, name, full[:5])  # a gzip header cut short
        with pytest.raises(InputError, match=re.escape(name) + ":1: "):
            load_qrels(p)


def test_directory_missing_and_special_files(tmp_path):
    d = tmp_path / "corpus.jsonl"
    d.mkdir()
    with pytest.raises(InputError, match=r"corpus.jsonl: is a directory, expected a file$"):
        scan_corpus(d)
    with pytest.raises(InputError, match=r"nope.jsonl: no such file$"):
        load_queries(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match=r"null: not a regular file$"):
        load_qrels("/dev/null")


def test_overlong_line_is_an_error_not_a_memory_hog(tmp_path, monkeypatch):
    monkeypatch.setattr(beir, "MAX_LINE_BYTES", 64)
    line = b'{"_id": "a", "text": "' + b"x" * 40 + b'"}\n'
    assert len(line) == 65  # a line of exactly the limit, plus its newline, is fine
    assert scan_corpus(write(tmp_path, "ok.jsonl", line + line.replace(b'"a"', b'"b"'))).count == 2
    long = b'{"_id": "b", "text": "' + b"x" * 100 + b'"}\n'
    p = write(tmp_path, "long.jsonl", line + long)
    with pytest.raises(InputError, match=r"long.jsonl:2: line longer than 64 bytes$"):
        scan_corpus(p)
    p = write(tmp_path, "long.tsv", b"1 d1 1\n" + b"2 " + b"d" * 200)  # no final newline either
    with pytest.raises(InputError, match=r"long.tsv:2: line longer than 64 bytes$"):
        load_qrels(p)


def test_qrels_any_whitespace_and_trec_columns(tmp_path):
    want = {"1": {"d1": 1, "d2": 2}, "2": {"d3": 0}}
    for name, data in [
        ("tabs.tsv", b"1\td1\t1\n1\td2\t2\n2\td3\t0\n"),
        ("spaces.txt", b"1 d1 1\n1  d2   2\n 2 d3 0 \n"),
        ("mixed.txt", b"1 \t d1\t1\r\n1\td2 2\r\n\r\n2\td3\t0"),  # CRLF, blank line, no final newline
        ("trec.qrels", b"1 0 d1 1\n1 0 d2 2\n2 Q0 d3 0\n"),
        ("trec-tabs.qrels", b"1\t0\td1\t1\n1\t0\td2\t2\n2\t0\td3\t0\n"),
        ("header.tsv", b"query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t2\n2\td3\t0\n"),
        ("other-header.tsv", b"qid docno relevance\n1 d1 1\n1 d2 2\n2 d3 0\n"),
        ("trec-header.txt", b"\n\nqid iter docno rel\n1 0 d1 1\n1 0 d2 2\n2 0 d3 0\n"),
        ("floats.tsv", b"1 d1 1.0\n1 d2 2.\n2 d3 -0e5\n"),  # integral values written as decimals
    ]:
        assert load_qrels(write(tmp_path, name, data)) == want, name
    assert load_qrels(write(tmp_path, "neg.tsv", b"1 d1 -1\n1 d2 +3\n")) == {"1": {"d1": -1, "d2": 3}}


@pytest.mark.parametrize("data, message", [
    (b"query-id\tcorpus-id\tscore\n1\td1\n", "bad.tsv:2: expected 3 columns (query-id corpus-id score) or 4 "
                                            "(TREC: query-id iteration corpus-id relevance), got 2"),
    (b"1 0 d1 1 extra\n", "bad.tsv:1: expected 3 columns"),
    (b"1\n", "bad.tsv:1: expected 3 columns"),
    # only the first line may be a header; after it a word in the score column is an error
    (b"1\td1\t1\n1\td2\thigh\n", "bad.tsv:2: score 'high' is not a number"),
    (b"query-id corpus-id score\nq corpus score\n", "bad.tsv:2: score 'score' is not a number"),
    (b"1 d1 nan\n1 d2 inf\n", "bad.tsv:2: score 'inf' is not a number"),
    (b"1 d1 0.5\n", "bad.tsv:1: score '0.5' is not an integer relevance grade"),
    (b"1 d1 1e400\n", "bad.tsv:1: score '1e400' is not an integer relevance grade"),
    (b"1 d1 " + b"9" * 5000 + b"\n", "bad.tsv:1: score '" + "9" * 5000 + "' is not an integer relevance grade"),
    (b"1 d1 3000000000\n", "bad.tsv:1: score '3000000000' is not an integer relevance grade"),
    (b"1\td\x00\t1\n", "bad.tsv:1: NUL byte at byte 3"),
    (b"1\td\xe9\t1\n", "bad.tsv:1: not valid UTF-8 (byte 3)"),
    (b"query-id\tcorpus-id\tscore\n\n", "bad.tsv: empty qrels file"),
    (b"", "bad.tsv: empty qrels file"),
])
def test_bad_qrels(tmp_path, data, message):
    p = write(tmp_path, "bad.tsv", data)
    with pytest.raises(InputError) as exc:
        load_qrels(p)
    assert str(exc.value).startswith(str(tmp_path))
    assert str(exc.value)[len(str(tmp_path)) + 1:].startswith(message)
    assert len(str(exc.value).splitlines()) == 1
