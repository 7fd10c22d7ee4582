"""What training learns from: a pool of queries, the teacher's passages for each, and a dev set.

The **pool** holds every query a step can draw, as encoder embeddings [P, d]:

- *labelled* queries (from the training qrels): they carry positives, for the supervised loss;
- *unlabelled* queries (a queries file given without qrels: every query of the file);
- *pseudo-queries*: passages of the corpus standing in for queries about them, so the quantizer learns
  about passages that no real query points to.  By default each sampled passage gives two: its title
  (its opening words when it has none) encoded as a query, short and asymmetric to the passage it names
  as a real query is (the inverse cloze task of Lee et al., 2019, makes a sentence the query of its
  context; a title that several passages share gives way to each one's opening sentence), and the
  passage's own embedding.  ``pseudo_source`` chooses any of ``titles``, ``passages`` and ``sentences``
  (a sentence of the passage's text drawn at random, read from the corpus file, as the inverse cloze task
  does), joined by "+".  Chosen on cold dev (3 folds x 3 index seeds, tools/dev_sweep.py), cross-fitted
  gains: titles + passages +0.0278 (SciFact) and +0.0260 (NFCorpus), titles alone +0.0199 and +0.0221;
  stop 19's kept-step gains put passage embeddings alone below titles (+0.0247 against +0.0306 on
  SciFact, +0.0312 against +0.0430).  Stop 21, every passage: adding sentences to titles + passages
  gave +0.0331 and +0.0217 against +0.0334 and +0.0260, sentences in place of titles +0.0240 and +0.0227.

With qrels, only the queries the training qrels name are used: the rest of a BEIR queries file holds
the test queries, which training must never see.

The distillation teacher needs each pool query's best passages under flat search: they are computed
once, block by block over the memory-mapped cache, and kept with the run (``teacher`` [P, teacher_k]).
Above EXACT_TEACHER_MAX passages exact search would take minutes (6-8 s per 1,000 queries at 1M on 2
cores, and a 1M pool holds 36-70k queries), so the base index finds them instead: it probes
TEACHER_PROBE_FACTOR times its default lists and re-scores its best TEACHER_RERANK candidates exactly
from the float rows.  On the 1M realistic set that kept 98.8% of real queries' exact top 50 and all of
passages', 19x faster (tools/bench_teacher.py).

The **dev set** stops training.  Given dev qrels it is that.  Otherwise it is held out of the training
qrels, half *by passage* (a passage is hashed into the dev share, a query goes to dev when all of its
positives did, and no training query keeps a dev passage as a positive) and half by query (see
:func:`split_by_passage`).  So dev measures both what a user's next queries meet: passages no training
query pointed to, and passages that training queries did.  Without any qrels, dev is a share of the
queries (or of the passages), scored by agreement with flat search.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_write
from ..beir import load_qrels, load_queries
from ..cache import SNIPPET_BYTES, Cache
from ..encoder.model_dir import file_sha256
from ..errors import QliteError
from ..index.flat import flat_search
from .config import pseudo_sources

MIN_DEV_QUERIES = 20
UNLABELLED_DEV_SHARE = 0.1
PSEUDO_DEV_QUERIES = 256
EXACT_TEACHER_MAX = 1 << 17  # passages: exact search of a pool of 65,536 queries takes about a minute here
TEACHER_PROBE_FACTOR = 4
TEACHER_RERANK = 1000
POOL_FORMAT = "qlite-pool-1"


@dataclass
class Labelled:
    qids: list
    texts: list
    pos_ptr: np.ndarray  # CSR: positives of query i are pos_rows[pos_ptr[i]:pos_ptr[i + 1]] (sorted rows)
    pos_rows: np.ndarray
    qrels: dict  # {qid: {doc id: grade}}, for metrics

    def __len__(self):
        return len(self.qids)

    def positives(self, i) -> np.ndarray:
        return self.pos_rows[self.pos_ptr[i]:self.pos_ptr[i + 1]]

    def subset(self, idx, keep_rows=None) -> "Labelled":
        """Queries ``idx``; with ``keep_rows`` (bool [N]) only those positives stay."""
        idx = list(idx)
        parts = [self.positives(i) for i in idx]
        if keep_rows is not None:
            parts = [p[keep_rows[p]] for p in parts]
        qids = [self.qids[i] for i in idx]
        return Labelled(qids, [self.texts[i] for i in idx], *csr(parts), {q: self.qrels[q] for q in qids})


def csr(parts):
    """(ptr, rows): the arrays in ``parts`` concatenated, part i at rows[ptr[i]:ptr[i + 1]]."""
    ptr = np.zeros(len(parts) + 1, np.int64)
    ptr[1:] = np.cumsum([len(p) for p in parts])
    return ptr, np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def load_labelled(cache: Cache, queries: dict, qrels_path) -> Labelled:
    """Queries of ``qrels_path`` that have a text and at least one relevant (grade >= 1) passage in the cache."""
    qrels = load_qrels(qrels_path)
    qids, texts, parts, kept = [], [], [], {}
    for qid in sorted(qrels):
        if qid not in queries:
            continue
        docs = [d for d, g in qrels[qid].items() if g >= 1]
        rows = cache.rows_of(docs) if docs else np.zeros(0, np.int64)
        rows = np.unique(rows[rows >= 0])
        if len(rows):
            qids.append(qid)
            texts.append(queries[qid])
            parts.append(rows)
            kept[qid] = qrels[qid]
    if not qids:
        raise QliteError(f"{qrels_path}: no query has both a text in the queries file and a relevant passage "
                         f"in {cache.path}")
    return Labelled(qids, texts, *csr(parts), kept)


def held_out_passages(cache: Cache, rows: np.ndarray, share: float, seed: int) -> np.ndarray:
    """bool [N]: True for those of ``rows`` a salted hash of the passage id puts in the dev share."""
    held = np.zeros(cache.count, bool)
    cut = int(share * 2 ** 32)
    salt = int(seed).to_bytes(8, "little", signed=True)
    ids = cache.ids
    for r in np.unique(rows):
        digest = hashlib.blake2b(ids[r], digest_size=4, salt=salt).digest()
        held[r] = int.from_bytes(digest, "little") < cut
    return held


def split_by_passage(train: Labelled, held: np.ndarray, seed: int):
    """(train, dev, how): the default dev set, two halves of equal size pooled together.

    - *held-out passages*: the queries whose positives are all held-out passages (training queries lose
      any held-out positive, so those passages are never trained on): what a user's next queries meet
      when they ask about passages no training query pointed to;
    - *held-out queries*: as many random other queries, whose positives may also be other training
      queries' positives: what a user's next queries meet when they ask about the same passages again.

    Training is stopped on their pooled nDCG@10, so it may memorise the training pairs only as far as
    that does not cost passages it has never seen.  Falls back to random held-out queries alone when too
    few queries have only held-out positives.
    """
    all_held, rest = [], []
    for i in range(len(train)):
        (all_held if held[train.positives(i)].all() else rest).append(i)
    rng = np.random.default_rng([seed, 7])
    if len(all_held) >= MIN_DEV_QUERIES and len(rest) >= 2 * len(all_held):
        queries = sorted(rng.choice(rest, len(all_held), replace=False).tolist())
        dev = sorted(all_held + queries)
        kept = sorted(set(rest) - set(queries))
        return (train.subset(kept, keep_rows=~held), train.subset(dev),
                f"dev: {len(all_held)} queries on held-out passages + {len(queries)} held-out queries")
    n_dev = round(0.1 * len(train))
    if n_dev < 1 or len(train) - n_dev < 1:
        return train, None, "no dev"
    order = rng.permutation(len(train))
    return train.subset(sorted(order[n_dev:])), train.subset(sorted(order[:n_dev])), "dev: held-out queries"


def _title_and_text(snippet: str) -> tuple[str, str]:
    """A cache snippet ("title | text", at most 128 bytes) split into (title, text); a snippet without the
    separator is taken as a passage without a title."""
    title, sep, text = snippet.partition(" | ")
    return (title, text) if sep else ("", title)


def pseudo_texts(cache: Cache, rows) -> list:
    """The text standing in for a query about each of ``rows``: its title, read from the cache's snippets
    (at most 128 bytes of "title | text"), or its opening words up to the first sentence end when it has
    no title, or when other rows share its title (a title naming several passages, as a Wikipedia
    article's does, or boilerplate such as "Summary", would make the same query many times).  "" where
    the cache keeps no text."""
    snippets = cache.snippets(rows, width=1 << 16)
    parts = []
    for r in rows:
        title, text = _title_and_text(snippets.get(int(r), ""))
        end = text.find(". ")
        parts.append((title.strip(), (text[:end + 1] if end > 0 else text).strip()))
    uses = Counter(title for title, _ in parts if title)
    return [title if title and uses[title] == 1 else opening for title, opening in parts]


# A sentence ends at . ! or ? followed by a space and a capital, digit, bracket or quote, except after a
# few abbreviations common in scientific text ("et al. (2019)", "Fig. 3", "e.g. The").  A heuristic: it
# misses sentences that start with a lower-case or non-ASCII letter, and then draws from a longer piece.
SENTENCE_END = re.compile(r"(?<!\bal\.)(?<!\bFig\.)(?<!\bfig\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bvs\.)(?<!\bNo\.)"
                          "(?<=[.!?])\\s+(?=[A-Z0-9(\\[\"'\u201c])")
MIN_SENTENCE_WORDS = 4
MAX_SENTENCE_WORDS = 64  # a text without a sentence end is cut here: a query, not the passage again


def pseudo_sentences(cache: Cache, rows, seed: int) -> tuple[list, int]:
    """(texts, found): one sentence of each of ``rows``' text (never its title), drawn at random, to stand in
    for a query about the passage, as the inverse cloze task of Lee et al. (2019) makes a sentence the query
    of its context.  Sentences of fewer than MIN_SENTENCE_WORDS words are passed over.  Texts come from the
    corpus file (:meth:`Cache.corpus_texts`; ``found`` counts them), else from the cache's snippet, which
    holds only the passage's opening words (the last piece of a snippet cut short is dropped when there is
    another).  "" where there is no text."""
    rows = np.asarray(rows, np.int64)
    full = cache.corpus_texts(rows)
    missing = [int(r) for r in rows if int(r) not in full]
    snippets = cache.snippets(missing, width=1 << 16) if missing else {}
    draw = np.random.default_rng([seed, 13]).random(len(rows))
    out = []
    for r, u in zip(rows.tolist(), draw):
        snippet = snippets.get(r, "")
        # a snippet filled to its last bytes (a UTF-8 character is at most 4) was cut short
        cut = r not in full and len(snippet.encode("utf-8")) > SNIPPET_BYTES - 4
        text = " ".join((full[r] if r in full else _title_and_text(snippet)[1]).split())
        pieces = SENTENCE_END.split(text) if text else []
        if cut and len(pieces) > 1:
            pieces = pieces[:-1]
        sentences = [p for p in pieces if len(p.split()) >= MIN_SENTENCE_WORDS] or ([text] if text else [])
        out.append(" ".join(sentences[int(u * len(sentences))].split()[:MAX_SENTENCE_WORDS]) if sentences else "")
    return out, len(full)


def teacher_uses_index(index, n) -> bool:
    """Whether the teacher of a corpus of ``n`` passages asks ``index`` (the base index, or None)."""
    return index is not None and n > EXACT_TEACHER_MAX


def teacher_top(embeddings, queries, k, block_queries=1024, bar=None, index=None) -> np.ndarray:
    """rows [P, k] int64: each query's k best passages by flat search (inner product), blockwise; ``bar``
    (a progress bar, or None) advances by each block's queries (on a 1M corpus a block takes seconds).

    With ``index`` (the base IVF-PQ of ``embeddings``) and more than EXACT_TEACHER_MAX passages, the
    index's candidates re-scored exactly stand in for flat search (see the module docstring); -1 pads a
    query whose probed lists hold fewer than k passages."""
    out = np.empty((len(queries), min(k, len(embeddings))), np.int64)
    use_index = teacher_uses_index(index, len(embeddings))
    nprobe = TEACHER_PROBE_FACTOR * index.default_nprobe() if use_index else 0
    for s in range(0, len(queries), block_queries):
        block = queries[s:s + block_queries]
        if use_index:
            out[s:s + len(block)] = index.search(block, out.shape[1], nprobe=nprobe,
                                                 rerank=max(TEACHER_RERANK, out.shape[1]), source=embeddings)[1]
        else:
            out[s:s + len(block)] = flat_search(embeddings, block, k)[1]
        if bar is not None:
            bar.update(len(block))
    return out


def input_fingerprint(*paths) -> dict:
    return {Path(p).name if p else f"none{i}": file_sha256(p) if p else "" for i, p in enumerate(paths)}


@dataclass
class DevSet:
    metric: str  # "ndcg@10" (labelled) or "agreement@10" (share of flat search's top 10 the index finds)
    vectors: np.ndarray  # [n, d] encoder embeddings of the dev queries
    qids: list = field(default_factory=list)
    qrels: dict = field(default_factory=dict)
    flat_top: np.ndarray | None = None  # [n, 10] for agreement


@dataclass
class Pool:
    vectors: np.ndarray  # [P, d] float32: labelled, then unlabelled, then pseudo-queries
    pos_ptr: np.ndarray  # [P + 1] CSR of positives (empty past the labelled queries)
    pos_rows: np.ndarray
    teacher: np.ndarray  # [P, teacher_k] int64
    counts: dict  # labelled, unlabelled, pseudo
    dev: DevSet | None
    dev_split: str

    def __len__(self):
        return len(self.vectors)

    def positives(self, i) -> np.ndarray:
        return self.pos_rows[self.pos_ptr[i]:self.pos_ptr[i + 1]]

    def describe(self) -> dict:
        return {**self.counts, "dev": len(self.dev.vectors) if self.dev is not None else 0}

    def describe_text(self) -> str:
        c = self.describe()
        sentences = "passage sentences" + (f" ({c.get('sentences_from_corpus', 0):,} read from the corpus file, the "
                                           "rest from the cache's snippets)"
                                           if c.get("sentences_from_corpus", 0) < c.get("pseudo_sentences", 0) else "")
        kinds = [(c.get("pseudo_titles", 0), "passage titles"), (c.get("pseudo_sentences", 0), sentences)]
        kinds.insert(0, (c["pseudo"] - sum(n for n, _ in kinds), "passages"))
        named = [f"{n:,} {what}" for n, what in kinds if n] or ["no passages"]
        pseudo = ", ".join(named[:-1]) + (" and " if len(named) > 1 else "") + named[-1]
        return (f"{c['labelled']:,} labelled queries, {c['unlabelled']:,} unlabelled, {pseudo} as queries; "
                f"{c['dev']:,} dev queries ({self.dev_split})")

    def save(self, path):
        with atomic_write(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = POOL_FORMAT
                f.attrs["counts"] = json.dumps(self.counts)
                f.attrs["dev_split"] = self.dev_split
                for name in ("vectors", "pos_ptr", "pos_rows", "teacher"):
                    f[name] = getattr(self, name)
                if self.dev is not None:
                    g = f.create_group("dev")
                    g.attrs["metric"] = self.dev.metric
                    g.attrs["qids"] = json.dumps(self.dev.qids)
                    g.attrs["qrels"] = json.dumps(self.dev.qrels)
                    g["vectors"] = self.dev.vectors
                    if self.dev.flat_top is not None:
                        g["flat_top"] = self.dev.flat_top


def load_pool(path) -> Pool:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise QliteError(f"{path}: unreadable query pool ({exc}); remove the run and start it again") from None
    with f:
        dev = None
        if "dev" in f:
            g = f["dev"]
            dev = DevSet(str(g.attrs["metric"]), g["vectors"][...], json.loads(g.attrs["qids"]),
                         json.loads(g.attrs["qrels"]), g["flat_top"][...] if "flat_top" in g else None)
        return Pool(f["vectors"][...], f["pos_ptr"][...], f["pos_rows"][...], f["teacher"][...],
                    json.loads(f.attrs["counts"]), dev, str(f.attrs["dev_split"]))


def build_pool(cache: Cache, cfg, queries_path, qrels_path, dev_qrels_path, threads, progress, path,
               index=None) -> Pool:
    """Gather, encode and save the run's queries (see the module docstring); ``index``, the base index, finds
    the teacher's passages in a corpus of more than EXACT_TEACHER_MAX passages."""
    from ..encoder.queries import encode_queries, query_encoder

    queries = load_queries(queries_path) if queries_path else {}
    labelled, unlabelled, dev_texts, dev, split = None, [], [], None, "no dev"
    if qrels_path:
        labelled = load_labelled(cache, queries, qrels_path)
        if dev_qrels_path:
            dev_l, split = load_labelled(cache, queries, dev_qrels_path), "dev: given qrels"
        else:
            held = held_out_passages(cache, labelled.pos_rows, cfg.dev_share, cfg.seed)
            labelled, dev_l, split = split_by_passage(labelled, held, cfg.seed)
        if dev_l is not None:
            dev_texts = dev_l.texts
            dev = DevSet("ndcg@10", None, dev_l.qids, dev_l.qrels)
    elif queries:
        qids = sorted(queries)
        order = np.random.default_rng([cfg.seed, 7]).permutation(len(qids))
        n_dev = max(1, round(UNLABELLED_DEV_SHARE * len(qids))) if len(qids) > 1 else 0
        dev_ids = {qids[i] for i in order[:n_dev]}
        unlabelled = [queries[q] for q in qids if q not in dev_ids]
        dev_texts = [queries[q] for q in qids if q in dev_ids]
        if dev_texts:
            dev, split = DevSet("agreement@10", None), "dev: held-out queries, agreement with flat search"
    texts = (labelled.texts if labelled else []) + unlabelled
    dev_vectors = None
    rng = np.random.default_rng([cfg.seed, 11])
    n = cache.count
    dev_pseudo = np.zeros(0, np.int64)
    if dev is None and not queries:  # nothing but the corpus: hold out passages as dev pseudo-queries
        dev_pseudo = np.sort(rng.choice(n, min(PSEUDO_DEV_QUERIES, max(1, n // 10)), replace=False))
        dev, split = DevSet("agreement@10", None), "dev: held-out passages as queries, agreement with flat search"
        dev_vectors = np.asarray(cache.embeddings[dev_pseudo], np.float32)
    candidates = np.setdiff1d(np.arange(n), dev_pseudo)
    pseudo = np.sort(rng.choice(candidates, min(cfg.pseudo_queries, len(candidates)), replace=False))
    sources = pseudo_sources(cfg.pseudo_source) if len(pseudo) else []
    texts_of = {}  # text source -> (rows that have a text, their texts), encoded as queries below
    sentences_read = 0
    for source in sources:
        if source == "titles":
            found = pseudo_texts(cache, pseudo)
        elif source == "sentences":
            found, sentences_read = pseudo_sentences(cache, pseudo, cfg.seed)
        else:
            continue
        texts_of[source] = (np.array([r for r, t in zip(pseudo, found) if t], np.int64), [t for t in found if t])
    n_texts = sum(len(t) for _, t in texts_of.values())
    encoder = query_encoder(cache, threads) if texts or dev_texts or n_texts else None
    with progress.stage("encoding queries", len(texts) + len(dev_texts) + n_texts) as bar:
        real = encode_queries(encoder, texts) if texts else np.zeros((0, cache.dim), np.float32)
        bar.update(len(texts))
        if dev_texts:
            dev_vectors = encode_queries(encoder, dev_texts)
            bar.update(len(dev_texts))
        encoded = {}
        for source, (_, found) in texts_of.items():
            encoded[source] = encode_queries(encoder, found) if found else np.zeros((0, cache.dim), np.float32)
            bar.update(len(found))
    embeddings = np.asarray(cache.embeddings[pseudo], np.float32)
    blocks = []  # one block of pseudo-queries per source, in PSEUDO_SOURCES order
    for source in sources:
        if source == "passages":
            blocks.append(embeddings)
        elif not blocks and "passages" not in sources:  # the first source alone: a passage without text keeps its own
            filled = embeddings.copy()
            filled[np.searchsorted(pseudo, texts_of[source][0])] = encoded[source]
            blocks.append(filled)
        else:
            blocks.append(encoded[source])
    pseudo_vectors = np.vstack(blocks) if blocks else embeddings
    vectors = np.vstack([real, pseudo_vectors]).astype(np.float32)
    if len(vectors) == 0:
        raise QliteError("nothing to train on: no queries and no passages as queries")
    n_lab = len(labelled) if labelled else 0
    parts = [labelled.positives(i) for i in range(n_lab)] + [np.zeros(0, np.int64)] * (len(vectors) - n_lab)
    pos_ptr, pos_rows = csr(parts)
    agreement = dev is not None and dev.metric == "agreement@10"
    label = ("teacher: index candidates re-scored exactly" if teacher_uses_index(index, cache.count)
             else "teacher: flat search")
    with progress.stage(label, len(vectors) + (len(dev_vectors) if agreement else 0)) as bar:
        teacher = teacher_top(cache.embeddings, vectors, cfg.teacher_k, bar=bar, index=index)
        if agreement:
            dev.flat_top = teacher_top(cache.embeddings, dev_vectors, 10, bar=bar)
    if dev is not None:
        dev.vectors = dev_vectors
    counts = {"pseudo_titles": len(texts_of.get("titles", (0, []))[1])}
    if "sentences" in texts_of:  # (pools without sentences keep the counts they always had)
        counts.update(pseudo_sentences=len(texts_of["sentences"][1]), sentences_from_corpus=sentences_read)
    pool = Pool(vectors, pos_ptr, pos_rows, teacher,
                {"labelled": n_lab, "unlabelled": len(unlabelled), "pseudo": len(pseudo_vectors), **counts}, dev, split)
    pool.save(path)
    return pool
