"""Fuzzing the input readers: whatever the bytes, a reader either parses them correctly or raises
qlite's own error with one line that starts with the file's path.  Never another exception.

Cases are seeded (reruns are identical): hand-picked malformed files, records with fields of random
JSON types, and random byte mutations of valid files, plain and gzipped.
"""
from __future__ import annotations

import gzip
import io
import json
import random
import re
import traceback

import pytest
from click.testing import CliRunner

from qlite.beir import load_qrels, load_queries, scan_corpus
from qlite.cli import cli
from qlite.errors import QliteError

SEED = 20240612
WHITESPACE_IDS = ["a b", "a\tb", "a\nb", " a", "a\r", "a\x0b", "a\x1c", "a\x85", "a\xa0b", "a\u2028", "\u3000"]


# ---------------------------------------------------------------------------------------------- oracle
# An independent reading of what the readers must accept, used to check every file that parses.

def _oracle_lines(data: bytes):
    text = data.decode("utf-8")  # the reader accepted the file, so it must be UTF-8 (after a BOM)
    text = text.removeprefix("\ufeff")
    return [line for line in text.split("\n") if line.strip()]


def _oracle_id(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    assert isinstance(value, str) and value, f"accepted an _id of type {type(value).__name__}: {value!r}"
    assert not any(c.isspace() or c == "\0" for c in value), f"accepted _id {value!r}"
    value.encode("utf-8")  # no lone surrogates
    return value


def _oracle_records(data: bytes, fields):
    out = []
    for line in _oracle_lines(data):
        obj = json.loads(line)
        assert isinstance(obj, dict)
        for name in fields:
            assert name in obj
        for name in ("text", "title"):
            assert obj.get(name) is None or isinstance(obj[name], str)
            if isinstance(obj.get(name), str):
                obj[name].encode("utf-8")
        out.append((_oracle_id(obj["_id"]), obj))
    return out


def check_corpus(data, result):
    want = [i for i, _ in _oracle_records(data, ("_id", "text"))]
    assert [i.decode("utf-8") for i in result.ids] == want
    assert len(set(want)) == len(want) == result.count > 0


def check_queries(data, result):
    records = _oracle_records(data, ("_id", "text"))
    assert result == {i: obj["text"] or "" for i, obj in records}
    assert len(records) == len(result) > 0


def check_qrels(data, result):
    want, first = {}, True
    for line in _oracle_lines(data):
        cols = line.split()
        assert len(cols) in (3, 4), f"accepted a line of {len(cols)} columns"
        qid, did, score = (cols[0], cols[1], cols[2]) if len(cols) == 3 else (cols[0], cols[2], cols[3])
        try:
            grade = float(score)
        except ValueError:
            grade = None
        if first and (grade is None or not re.fullmatch(r"[0-9eE.+-]+", score)):
            first = False
            continue
        first = False
        assert grade is not None and grade.is_integer(), f"accepted score {score!r}"
        want.setdefault(qid, {})[did] = int(grade)
    assert result == want and want


READERS = {"corpus": (scan_corpus, check_corpus), "queries": (load_queries, check_queries),
           "qrels": (load_qrels, check_qrels)}


# ---------------------------------------------------------------------------------------------- valid inputs

def valid_corpus(rng, n=12) -> bytes:
    words = ["vitamin", "d", "helps", "bones", "caf\u00e9", "\u6587\u732e", "tab\there", "quote\"d", "\U0001f600"]
    lines = []
    for i in range(n):
        doc = {"_id": i if i % 5 == 4 else f"doc{i}", "text": " ".join(rng.choice(words) for _ in range(6))}
        if i % 2:
            doc["title"] = rng.choice(words)
        lines.append(json.dumps(doc, ensure_ascii=rng.random() < 0.5))
    return ("\n".join(lines) + "\n").encode()


def valid_queries(rng, n=8) -> bytes:
    return "".join(json.dumps({"_id": f"q{i}", "text": f"what about {rng.random():.3f}?"}) + "\n"
                   for i in range(n)).encode()


def valid_qrels(rng, n=10) -> bytes:
    trec = rng.random() < 0.5
    sep = rng.choice(["\t", " ", "  "])
    lines = [] if trec or rng.random() < 0.5 else [sep.join(["query-id", "corpus-id", "score"])]
    for i in range(n):
        cols = [f"q{i % 3}", f"doc{i}", str(rng.randint(0, 2))]
        lines.append(sep.join([cols[0], "0", cols[1], cols[2]] if trec else cols))
    return ("\n".join(lines) + "\n").encode()


VALID = {"corpus": valid_corpus, "queries": valid_queries, "qrels": valid_qrels}


# ---------------------------------------------------------------------------------------------- malformed inputs

def record_line(obj) -> bytes:
    return json.dumps(obj).encode()


def handpicked(kind) -> list[bytes]:
    """The cases of issue 12 (plus a few more), for one kind of file."""
    ok = b'{"_id": "a", "text": "x"}' if kind != "qrels" else b"q1\td1\t1"
    cases = [
        b"", b"\n\n  \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf" + ok + b"\n", ok.replace(b"\n", b"\r\n") + b"\r\n",
        ok + b"\r\n\r\n" + ok.replace(b"a", b"b").replace(b"d1", b"d2") + b"\r\n",
        ok + b"\n\x00\x00\x00\n", b"\x00" * 64, ok + b"\x00\n", ok + b"\n" + b"\xff\xfe\xfd\n", b"\xc3\n",
        "\ufeff".encode("utf-16") + ok, gzip.compress(ok + b"\n"), ok + b"\n" + b"x" * 300_000 + b"\n",
        ok + b"\n" + ok[:10], ok + b"\r", b"\r".join([ok, ok]), b"\xef\xbb\xbf\xef\xbb\xbf" + ok,
        b"\x1f\x8b", b"\x1f", ok + b"\n\x1c\n", ok + b"\n\xc2\x85\n" + ok,
    ]
    if kind == "qrels":
        cases += [b"q1 d1 1\n", b"q1 0 d1 1\n", b"q1 d1\n", b"q1 d1 1 2 3\n", b"q1\td1\tnan\nq2\td2\tinf\n",
                  b"h h h\nq1 d1 1.5\n", b"q1 d1 1e999\n", b"q1 d1 -1\n", b"q1 d1 " + b"9" * 6000 + b"\n",
                  b"qid docno rel\nq1 d1 x\n", b"q1\xc2\xa0d1\xc2\xa01\n", b"q1\x0bd1\x0c1\n", b"q1 d1 0x1\n",
                  b"q1 d1 1_0\n", b"q1 d1 \xd9\xa1\n", b"q1 d1 \xef\xbc\x91\n"]
        return cases
    values = [None, True, False, 0, 7, -3, 1.5, 1.0, 1e300, float("nan"), "", "ok", [], ["a"], {}, {"a": 1},
              "\ud800", "a\u0000", 10**40] + WHITESPACE_IDS
    for v in values:
        cases.append(record_line({"_id": v, "text": "x"}) + b"\n")
        cases.append(record_line({"_id": "a", "text": v}) + b"\n")
        cases.append(record_line({"_id": "a", "title": v, "text": "x"}) + b"\n")
    cases += [
        b'{"_id": "a"}\n', b'{"text": "x"}\n', b"[]\n", b"null\n", b"1\n", b'"s"\n', b"{}\n",
        b'{"_id": 1' + b"2" * 5000 + b', "text": "x"}\n', b'{"_id": "a", "text": "x", "m": ' + b"[" * 50000 + b"\n",
        b'{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n',
        b'{"_id": 1, "text": "x"}\n{"_id": "1", "text": "y"}\n',
        b'{"_id": "a", "text": "x"} {"_id": "b", "text": "y"}\n', b'{"_id": "a", "text": "x", "_id": "b"}\n',
        b'{"_id": "a", "text": "x\\ud83d\\ude00"}\n', b'{"_id": "a", "text": "\\udfff\\ud800"}\n',
        b'{"_id": "a", "text": "x"}\n\xef\xbb\xbf{"_id": "b", "text": "y"}\n', b'{"_id": NaN, "text": Infinity}\n',
        b'{"_id": "a", "text": "raw\ttab and raw\rCR"}\n', b'{"_id": "' + b"i" * 5000 + b'", "text": "x"}\n',
    ]
    return cases


def record_fuzz(rng, n) -> list[bytes]:
    """Files of a few records whose fields take random JSON values (valid or not)."""
    pool = [None, True, 3, -1, 2.5, 1e20, "", "x", "doc", "d 1", "d\t1", "\u00e9", [], ["x"], {}, {"_id": "x"},
            "\ud83d", "a\u0000b", "\u2029"]
    out = []
    for _ in range(n):
        lines = []
        for i in range(rng.randint(1, 4)):
            obj = {}
            for name in ("_id", "text", "title", "extra"):
                r = rng.random()
                if r < 0.55:
                    obj[name] = f"{name}{i}" if name == "_id" else "some text"
                elif r < 0.9:
                    obj[name] = rng.choice(pool)
            # unescaped, a lone surrogate becomes bytes that are not UTF-8: a case of its own
            lines.append(json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass"))
        out.append(b"\n".join(lines) + b"\n")
    return out


INTERESTING = [b"\x00", b"\n", b"\r", b"\r\n", b"\t", b" ", b'"', b"{", b"}", b"[", b"\\", b"\\u", b"\\ud800",
               b"\xff", b"\xc3", b"\xe2\x80\xa8", b"\xc2\x85", b"\xef\xbb\xbf", b"\x1f\x8b", b"1e999", b"nan",
               b"\xef\xbf\xbd", b"\xf0\x9f"]


def mutate(rng, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip bits
            i = min(i, len(b) - 1)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert an interesting byte string
            b[i:i] = rng.choice(INTERESTING)
        elif op == 2:  # insert random bytes
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif op == 3:  # delete a range
            del b[i:i + rng.randint(1, 12)]
        elif op == 4:  # duplicate a range (repeats an id, splits a token)
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j):max(i, j)][:200]
        elif op == 5:  # truncate
            del b[i:]
        else:  # overwrite with an interesting byte string
            s = rng.choice(INTERESTING)
            b[i:i + len(s)] = s
    return bytes(b)


def gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def cases(kind):
    """(name, file bytes, gzipped?) for one kind of reader: about 200 per kind."""
    rng = random.Random(f"{SEED}-{kind}")
    out = [(f"hand{i}", data, False) for i, data in enumerate(handpicked(kind))]
    if kind != "qrels":
        out += [(f"record{i}", data, False) for i, data in enumerate(record_fuzz(rng, 40))]
    for i in range(90):
        out.append((f"mut{i}", mutate(rng, VALID[kind](rng)), False))
    for i in range(25):  # mutations of the text, then gzipped: the reader sees the mutated text
        out.append((f"gzmut{i}", gz(mutate(rng, VALID[kind](rng))), True))
    for i in range(25):  # mutations of the compressed bytes: corrupt or truncated streams
        out.append((f"gzraw{i}", mutate(rng, gz(VALID[kind](rng))), True))
    for i in range(5):  # plain truncation of a larger gzip file
        data = gz(VALID[kind](rng, 400))
        out.append((f"gzcut{i}", data[: rng.randrange(len(data))], True))
    return out


def _decompressed(data: bytes) -> bytes:
    return gzip.decompress(data)


@pytest.mark.parametrize("kind", sorted(READERS))
def test_readers_parse_or_fail_with_one_line(tmp_path, kind):
    read, check = READERS[kind]
    problems, parsed, failed = [], 0, 0
    all_cases = cases(kind)
    assert len(all_cases) >= 150
    for name, data, is_gz in all_cases:
        path = tmp_path / (f"{kind}-{name}.jsonl" if kind != "qrels" else f"{kind}-{name}.tsv")
        if is_gz:
            path = path.with_name(path.name + ".gz")
        path.write_bytes(data)
        try:
            result = read(path)
        except QliteError as exc:
            failed += 1
            msg = str(exc)
            m = re.fullmatch(re.escape(str(path)) + r"(?::(\d+))?: (\S.*)", msg)
            if m is None or len(msg.splitlines()) != 1:
                problems.append(f"{name}: bad message {msg!r}")
            continue
        except Exception:  # noqa: BLE001  -- exactly what this test is looking for
            problems.append(f"{name}: {data[:80]!r}...\n{traceback.format_exc()}")
            continue
        parsed += 1
        try:
            check(_decompressed(data) if is_gz else data, result)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: parsed to something wrong ({exc!r}) from {data[:120]!r}")
    assert not problems, f"{len(problems)} of {len(all_cases)} cases:\n" + "\n".join(problems[:5])
    # the generator must exercise both outcomes, or the test shows nothing
    assert parsed >= 10 and failed >= 50, (parsed, failed)


def test_whitespace_ids_fail_in_every_json_reader(tmp_path):
    for read in (scan_corpus, load_queries):
        for i, bad in enumerate(WHITESPACE_IDS):
            p = tmp_path / f"{read.__name__}{i}.jsonl"
            p.write_bytes(b'{"_id": "ok", "text": "x"}\n\n' + record_line({"_id": bad, "text": "y"}) + b"\n")
            with pytest.raises(QliteError) as exc:
                read(p)
            assert str(exc.value).startswith(f"{p}:3: _id ")
            assert "contains whitespace" in str(exc.value)


# ---------------------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("name, data, line", [
    ("bad.jsonl", b'{"_id": "a", "text": "x"}\n{"_id": "a b", "text": "y"}\n', 2),
    ("cut.jsonl.gz", gz(b"".join(record_line({"_id": f"d{i}", "text": f"text {i} " * 30}) + b"\n"
                                 for i in range(3000)))[:6000], None),
    ("nul.jsonl", b'{"_id": "a", "text": "x"}\n\n\n{"_id": "b", "text": "y"}\x00\n', 4),
])
def test_build_cache_reports_one_line_and_writes_nothing(tmp_path, tiny_model, name, data, line):
    bad = tmp_path / "in" / name
    bad.parent.mkdir()
    bad.write_bytes(data)
    out = tmp_path / "out" / "X.h5"
    out.parent.mkdir()
    r = CliRunner().invoke(cli, ["build-cache", str(bad), "--out", str(out), "--model", str(tiny_model), "--quiet",
                                 "--cpu-threads", "1"])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith("\n"), r.stderr
    prefix = f"Error: {bad}:"
    assert lines[0].startswith(prefix), lines[0]
    got_line = int(lines[0][len(prefix):].split(":")[0])
    if line is not None:
        assert got_line == line
    else:  # truncated gzip: the line being read when the data ran out
        assert got_line > 1 and "compressed data ends early" in lines[0]
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert list(bad.parent.iterdir()) == [bad]  # nor a default-named cache next to the input
