"""Progress bars on stderr (click's), silenced by --quiet, and human-friendly numbers."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import click


class _Silent:
    label = ""

    def update(self, n, current_item=None):
        pass


@contextmanager
def progress(length, label, quiet=False):
    if quiet:
        yield _Silent()
        return
    with click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True,
                           show_eta=True, width=24) as bar:
        yield bar


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
