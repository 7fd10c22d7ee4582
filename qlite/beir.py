"""Readers for BEIR-format inputs: corpus/queries JSON lines (optionally gzipped) and qrels TSV.

Every problem is reported as ``file:line: what is wrong``; nothing is guessed.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, QliteError


def _open_binary(path):
    path = Path(path)
    if not path.is_file():
        raise QliteError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_lines(path, hasher=None):
    """(line number, decoded text) for each non-blank line; ``hasher`` sees every decompressed byte."""
    with _open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                if hasher is not None:
                    hasher.update(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(path, lineno, f"not valid UTF-8 (byte {exc.start})") from None
                if line.strip():
                    yield lineno, line
        except (OSError, EOFError) as exc:  # truncated or corrupt gzip
            raise InputError(path, None, f"cannot read ({exc})") from None


def _record(path, lineno, line, fields):
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise InputError(path, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(path, lineno, "expected a JSON object")
    for name in fields:
        if name not in obj:
            raise InputError(path, lineno, f"missing field {name!r}")
    _id = obj["_id"]
    if isinstance(_id, int) and not isinstance(_id, bool):
        obj["_id"] = _id = str(_id)
    if not isinstance(_id, str) or not _id:
        raise InputError(path, lineno, "_id must be a non-empty string")
    for name in ("text", "title"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise InputError(path, lineno, f"{name} must be a string")
    return obj


def passage_text(doc) -> str:
    """What gets encoded: title + " " + text, as BEIR's dense evaluation does."""
    title = doc.get("title") or ""
    return (title + " " + (doc.get("text") or "")).strip()


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


def scan_corpus(path, on_line=None) -> CorpusScan:
    """Validate the whole corpus before any encoding: fields, duplicate ids, empty file.

    Ids are kept as one fixed-width byte array (compact: N x longest-id bytes), never a list.
    """
    hasher = hashlib.sha256()
    blocks, block = [], []
    for lineno, doc in iter_corpus(path, hasher):
        block.append(doc["_id"].encode("utf-8"))
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
    return CorpusScan(count=len(ids), sha256=hasher.hexdigest(), ids=ids, bytes=_size(path))


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


def load_qrels(path) -> dict[str, dict[str, int]]:
    """query id -> {doc id: graded relevance}; the header line is optional."""
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in iter_lines(path):
        cols = line.rstrip("\r\n").split("\t")
        if lineno == 1 and cols[:2] == ["query-id", "corpus-id"]:
            continue
        if len(cols) == 4:  # TREC qrels: qid iter docid rel
            cols = [cols[0], cols[2], cols[3]]
        if len(cols) != 3:
            raise InputError(path, lineno, f"expected 3 tab-separated columns (query-id, corpus-id, score), "
                                           f"got {len(cols)}")
        try:
            score = int(float(cols[2]))
        except ValueError:
            raise InputError(path, lineno, f"score {cols[2]!r} is not a number") from None
        qrels.setdefault(cols[0], {})[cols[1]] = score
    if not qrels:
        raise InputError(path, None, "empty qrels file")
    return qrels
