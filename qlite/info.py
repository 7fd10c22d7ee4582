"""``qlite info`` and ``qlite runs list``: what a cache holds, as a dict (for ``--json``) or as text."""
from __future__ import annotations

import h5py

from .cache import Cache, plain_attr
from .index.store import default_index_path
from .progress import human_bytes
from .runs import list_runs, runs_dir


UPDATE_COUNTS = ("unchanged", "edited", "added", "removed")


def runs_info(cache_path) -> list[dict]:
    out = []
    for r in list_runs(cache_path):
        m = r.meta
        state = "done" if r.finished else ("interrupted or running (rerun its train command to resume)" if m else
                                           "starting, or stopped before its first checkpoint")
        out.append({"name": r.name, "state": state, "started_at": m.get("started_at"),
                    "finished_at": m.get("finished_at"), "steps": m.get("steps"), "best_step": m.get("best_step"),
                    "dev_metric": m.get("dev_metric"), "dev_start": m.get("dev_start"), "dev_best": m.get("dev_best"),
                    "dev_split": m.get("dev_split"), "queries": m.get("queries"),
                    "settings": _changed_settings(m.get("config", {}))})
    return out


def _changed_settings(config: dict) -> dict:
    from .train.config import TrainConfig

    default = TrainConfig().as_dict()
    return {k: v for k, v in config.items() if default.get(k) != v}


def cache_info(cache_path) -> dict:
    with Cache(cache_path) as c:
        a = c.attrs
        info = {"file": str(c.path), "bytes": c.file_bytes(), "complete": c.complete, "rows_done": c.rows_done,
                "rows": c.count, "dim": c.dim,
                "model": {"name": a.get("model_name"), "pooling": a.get("model_pooling"),
                          "normalize": bool(a.get("model_normalize")), "max_length": a.get("max_length"),
                          "sha256": a.get("model_sha256")},
                "corpus": {"path": a.get("corpus_path"), "bytes": a.get("corpus_bytes"),
                           "sha256": a.get("corpus_sha256")},
                "qlite_version": a.get("qlite_version"),
                "last_update": ({"previous_rows": int(a["previous_count"]),
                                 **{k: int(a[f"update_{k}"]) for k in UPDATE_COUNTS}}
                                if all(f"update_{k}" in a for k in UPDATE_COUNTS) else None)}
    index_path = default_index_path(cache_path)
    info["index"] = None
    if index_path.is_file():
        try:
            with h5py.File(index_path, "r") as f:
                attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
            info["index"] = {"file": str(index_path), "bytes": index_path.stat().st_size,
                             **{k: attrs.get(k) for k in ("nlist", "m", "nbits", "opq", "metric", "ntotal")}}
        except OSError:
            info["index"] = {"file": str(index_path), "error": "unreadable"}
    info["runs_dir"] = str(runs_dir(cache_path))
    info["runs"] = runs_info(cache_path)
    return info


def format_runs(runs: list[dict]) -> str:
    if not runs:
        return "no training runs"
    lines = []
    for r in runs:
        dev = (f"dev {r['dev_metric']} {r['dev_start']:.4f} -> {r['dev_best']:.4f} (step {r['best_step']})"
               if r.get("dev_best") is not None else "no dev score")
        when = r.get("finished_at") or r.get("started_at") or ""
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        lines.append(f"{r['name']}: {r['state']}; {dev}; {when}; {settings}")
    return "\n".join(lines)


def format_info(info: dict) -> str:
    m, c = info["model"], info["corpus"]
    state = "complete" if info["complete"] else f"partial: {info['rows_done']:,} / {info['rows']:,}"
    lines = [("file", f"{info['file']} ({human_bytes(info['bytes'])})"), ("state", state),
             ("rows", f"{info['rows']:,} x {info['dim']} float32"),
             ("model", f"{m['name']} (pooling {m['pooling']}, {'normalised' if m['normalize'] else 'not normalised'}, "
                       f"max length {m['max_length']}, sha256 {str(m['sha256'] or '')[:12]})"),
             ("corpus", f"{c['path']} ({human_bytes(c['bytes'] or 0)}, sha256 {str(c['sha256'] or '')[:12]})")]
    up = info.get("last_update")
    if up:
        lines.append(("update", f"from {up['previous_rows']:,} rows: " +
                      ", ".join(f"{up[k]:,} {k}" for k in UPDATE_COUNTS)))
    ix = info["index"]
    if ix is None:
        lines.append(("index", "none (qlite index build CACHE)"))
    elif "error" in ix:
        lines.append(("index", f"{ix['file']}: {ix['error']}"))
    else:
        lines.append(("index", f"{ix['file']} ({human_bytes(ix['bytes'])}): nlist {ix['nlist']}, M {ix['m']} x "
                               f"{ix['nbits']} bit{', OPQ' if ix['opq'] else ''}, {ix['ntotal']:,} vectors"))
    lines.append(("qlite", info["qlite_version"]))
    text = "\n".join(f"{k + ':':8} {v}" for k, v in lines)
    runs = info["runs"]
    text += "\nruns:    " + (f"{len(runs)} in {info['runs_dir']}" if runs else "none")
    if runs:
        text += "\n" + "\n".join("  " + line for line in format_runs(runs).splitlines())
    return text
