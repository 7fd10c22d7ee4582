"""How long work reports progress: library code calls a :class:`Progress`; it never prints.

The default, ``SILENT``, ignores everything.  The command line passes :class:`ConsoleProgress`
(click progress bars and messages on stderr); tests and notebooks may pass their own subclass.

    with progress.stage("encoding", total=n) as bar:
        bar.update(rows, info="42 passages/s")
    progress.message("no index yet: building one")
"""
from __future__ import annotations

from contextlib import contextmanager


class Bar:
    def update(self, n: int = 1, info: str | None = None) -> None:
        """``n`` more units done; ``info``, if given, replaces the bar's short status text."""


class Progress:
    """Silent by default: subclass and override ``stage`` and ``message`` to show something."""

    @contextmanager
    def stage(self, label: str, total: int, done: int = 0):
        yield Bar()

    def message(self, text: str) -> None:
        pass


SILENT = Progress()


class ConsoleProgress(Progress):
    """click progress bars and messages on stderr (what the ``qlite`` command shows)."""

    @contextmanager
    def stage(self, label: str, total: int, done: int = 0):
        import sys

        import click

        with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True,
                               width=24) as bar:
            bar.update(done)
            yield _ClickBar(bar, label)

    def message(self, text: str) -> None:
        import click

        click.echo(text, err=True)


class _ClickBar(Bar):
    def __init__(self, bar, label):
        self.bar, self.label = bar, label

    def update(self, n: int = 1, info: str | None = None) -> None:
        if info is not None:
            self.bar.label = f"{self.label} {info}"
        self.bar.update(n)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
