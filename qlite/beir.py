"""Readers for BEIR-format inputs: corpus/queries JSON lines and qrels (BEIR TSV or TREC), optionally gzipped.

Every problem is reported as ``file:line: what is wrong``; nothing is guessed.
"""
from __future__ import annotations

import gzip
from array import array
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

MAX_LINE_BYTES = 64 << 20  # a longer line is an error (a JSON array file, a binary file), not read whole
MAX_ID_BYTES = 1024  # ids are stored fixed-width (count x longest id), so one huge id would blow up memory

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _open_binary(path):
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(path, None, "is a directory, expected a file")
        if not p.exists():
            raise InputError(path, None, "no such file")
        if not p.is_file():
            raise InputError(path, None, "not a regular file")
        return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    except (OSError, ValueError) as exc:  # permissions, a name too long, a NUL in the name
        raise InputError(path, None, f"cannot open ({_one_line(exc)})") from None


def _read_error(exc) -> str:
    if isinstance(exc, EOFError):
        return "compressed data ends early (truncated file?)"
    if isinstance(exc, gzip.BadGzipFile):
        return f"not valid gzip data ({_one_line(exc)})"
    if isinstance(exc, zlib.error):
        return f"corrupt compressed data ({_one_line(exc)})"
    return f"cannot read ({_one_line(exc)})"


def _first_line_problem(path, raw: bytes):
    if raw.startswith(_UTF16_BOMS):
        return "UTF-16 text (it starts with a UTF-16 byte-order mark); convert it to UTF-8"
    if raw.startswith(_GZIP_MAGIC) and Path(path).suffix != ".gz":
        return "gzip-compressed data in a file not named *.gz; rename it to end in .gz"
    return None


def iter_lines(path, hasher=None):
    """(line number, decoded text) for each non-blank line; ``hasher`` sees every decompressed byte.

    A UTF-8 byte-order mark at the start is skipped; CRLF line ends are fine (callers strip or split).
    """
    with _open_binary(path) as f:
        lineno = 0
        while True:
            lineno += 1
            try:
                raw = f.readline(MAX_LINE_BYTES + 1)
            except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip, I/O error
                raise InputError(path, lineno, _read_error(exc)) from None
            if not raw:
                return
            if hasher is not None:
                hasher.update(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise InputError(path, lineno, f"line longer than {MAX_LINE_BYTES:,} bytes")
            if lineno == 1:
                if raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM):]
                problem = _first_line_problem(path, raw)
                if problem:
                    raise InputError(path, lineno, problem)
            nul = raw.find(b"\0")
            if nul >= 0:
                raise InputError(path, lineno, f"NUL byte at byte {nul} (binary or corrupt file?)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(path, lineno, f"not valid UTF-8 (byte {exc.start})") from None
            if line.strip():
                yield lineno, line


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _check_id(path, lineno, value) -> str:
    """The id as a string: JSON integers are taken as their decimal spelling; floats are refused
    (``1.0`` or ``1e3`` have no single spelling that the qrels are sure to use: quote the id)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        raise InputError(path, lineno, f"_id {value!r} is a number with a fraction or exponent; "
                                       "write the id as a JSON string")
    if not isinstance(value, str) or not value:
        got = "an empty string" if value == "" else _json_type(value)
        raise InputError(path, lineno, f"_id must be a non-empty string (got {got})")
    # fast path: every whitespace character but " " is non-printable, and so is NUL
    bad = not value.isprintable() or " " in value
    for i, c in enumerate(value if bad else ""):
        if c.isspace() or c == "\0":
            what = "a NUL character" if c == "\0" else "whitespace"
            raise InputError(path, lineno, f"_id {value!r} contains {what} (U+{ord(c):04X} at position {i}); "
                                           "ids go into whitespace-separated run files, so they cannot")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InputError(path, lineno, f"_id is longer than {MAX_ID_BYTES} bytes")
    return value


def _check_encodable(path, lineno, name, value):
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(path, lineno, f"{name} contains an unpaired surrogate "
                                       f"(\\u{ord(value[exc.start]):04x}), which is not valid text") from None


def _record(path, lineno, line, fields):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(path, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InputError(path, lineno, "malformed JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError(path, lineno, f"malformed JSON ({_one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise InputError(path, lineno, f"expected a JSON object, got {_json_type(obj)}")
    for name in fields:
        if name not in obj:
            raise InputError(path, lineno, f"missing field {name!r}")
    obj["_id"] = _check_id(path, lineno, obj["_id"])
    for name in ("text", "title"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise InputError(path, lineno, f"{name} must be a string (got {_json_type(value)})")
    if "\\u" in line:  # only a \u escape can smuggle in a lone surrogate
        for name in ("_id", "text", "title"):
            if isinstance(obj.get(name), str):
                _check_encodable(path, lineno, name, obj[name])
    return obj


def passage_text(doc) -> str:
    """What gets encoded: title + " " + text, as BEIR's dense evaluation does."""
    title = doc.get("title") or ""
    return (title + " " + (doc.get("text") or "")).strip()


def passage_snippet(doc, width=160) -> str:
    """What a person sees of a passage in search results: "title | text", whitespace collapsed."""
    title = " ".join((doc.get("title") or "").split())
    text = " ".join((doc.get("text") or "")[:4 * width].split())
    s = (title + " | " if title else "") + text
    return s[:width]


def iter_corpus(path, hasher=None):
    """(line number, doc dict) for each passage of a BEIR corpus file."""
    for lineno, line in iter_lines(path, hasher):
        yield lineno, _record(path, lineno, line, ("_id", "text"))


@dataclass
class CorpusScan:
    count: int
    sha256: str
    ids: np.ndarray  # fixed-width UTF-8 bytes, one per passage, in file order
    bytes: int
    text_hashes: np.ndarray  # uint64 per passage: a hash of what gets encoded (passage_text)


def text_hash(text: str) -> int:
    """64-bit hash of a passage's encoded text: an update re-encodes a passage only when this changes."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def scan_corpus(path, on_line=None) -> CorpusScan:
    """Validate the whole corpus before any encoding: fields, duplicate ids, empty file.

    Ids are kept as one fixed-width byte array (compact: N x longest-id bytes), never a list.
    """
    hasher = hashlib.sha256()
    blocks, block, hashes = [], [], array("Q")  # compact: 8 bytes per passage
    for lineno, doc in iter_corpus(path, hasher):
        block.append(doc["_id"].encode("utf-8"))
        hashes.append(text_hash(passage_text(doc)))
        if len(block) == 65536:
            blocks.append(np.array(block, dtype=bytes))
            block = []
        if on_line is not None:
            on_line(lineno)
    if block:
        blocks.append(np.array(block, dtype=bytes))
    if not blocks:
        raise InputError(path, None, "empty corpus (no passages)")
    width = max(b.dtype.itemsize for b in blocks)
    ids = np.concatenate([b.astype(f"S{width}") for b in blocks])
    order = np.argsort(ids, kind="stable")
    dup = np.nonzero(ids[order[1:]] == ids[order[:-1]])[0]
    if len(dup):
        first, second = sorted(order[dup[0]:dup[0] + 2])
        lines = _lines_of_rows(path, (first, second))
        raise InputError(path, lines[1], f"duplicate _id {ids[second].decode()!r} (first seen on line {lines[0]})")
    return CorpusScan(count=len(ids), sha256=hasher.hexdigest(), ids=ids, bytes=_size(path),
                      text_hashes=np.frombuffer(hashes, np.uint64).copy())


def _lines_of_rows(path, rows):
    # only on the error path: a second pass maps passage rows back to file lines (blank lines skipped)
    wanted = {r: None for r in rows}
    for i, (lineno, _) in enumerate(iter_lines(path)):
        if i in wanted:
            wanted[i] = lineno
        if i >= max(rows):
            break
    return [wanted[r] for r in rows]


def _size(path):
    return Path(path).stat().st_size


def load_queries(path) -> dict[str, str]:
    queries = {}
    for lineno, line in iter_lines(path):
        q = _record(path, lineno, line, ("_id", "text"))
        if q["_id"] in queries:
            raise InputError(path, lineno, f"duplicate _id {q['_id']!r}")
        queries[q["_id"]] = q["text"] or ""
    if not queries:
        raise InputError(path, None, "empty queries file")
    return queries


_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_GRADE = 2**31 - 1


def _grade(path, lineno, text: str) -> int:
    """A relevance grade: an integer, also written as ``1.0`` or ``1e0``; fractions and huge values are refused."""
    value = float(text) if len(text) <= 40 else float("inf")
    if not value.is_integer() or abs(value) > _MAX_GRADE:
        raise InputError(path, lineno, f"score {text!r} is not an integer relevance grade")
    return int(value)


def load_qrels(path) -> dict[str, dict[str, int]]:
    """query id -> {doc id: graded relevance}.

    Columns are separated by any whitespace (tabs as in BEIR, spaces as in trec_eval): 3 columns are
    ``query-id corpus-id score``, 4 are TREC's ``query-id iteration corpus-id relevance``.  The first
    line is a header, and skipped, when its score column is not a number.
    """
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for lineno, line in iter_lines(path):
        cols = line.split()
        if len(cols) == 4:  # TREC qrels: qid iter docid rel
            cols = [cols[0], cols[2], cols[3]]
        if len(cols) != 3:
            raise InputError(path, lineno, f"expected 3 columns (query-id corpus-id score) or 4 (TREC: query-id "
                                           f"iteration corpus-id relevance), got {len(cols)}")
        is_number = _NUMBER.fullmatch(cols[2]) is not None
        if first and not is_number:  # header
            first = False
            continue
        first = False
        if not is_number:
            raise InputError(path, lineno, f"score {cols[2]!r} is not a number")
        qrels.setdefault(cols[0], {})[cols[1]] = _grade(path, lineno, cols[2])
    if not qrels:
        raise InputError(path, None, "empty qrels file")
    return qrels
