"""Write docs/cli.md from the commands' own --help (a test fails when the file is stale).

    python tools/make_cli_docs.py
"""
from __future__ import annotations

from pathlib import Path

import click

from qlite.cli import cli

HELP = ["-h", "--help"]  # as the CLI sets them (context_settings)
OUT = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def commands(group: click.Group, prefix=("qlite",)):
    """(name path, command) for every command, depth first, in the order `qlite --help` lists them."""
    ctx = click.Context(group, info_name=" ".join(prefix))
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from commands(cmd, prefix + (name,))


def render() -> str:
    parts = ["# qlite command reference", "",
             "Generated from each command's `--help` by `python tools/make_cli_docs.py`; do not edit by hand.", ""]
    top = click.Context(cli, info_name="qlite", terminal_width=100, max_content_width=100, help_option_names=HELP)
    parts += ["## qlite", "", "```", cli.get_help(top), "```", ""]
    for path, cmd in commands(cli):
        ctx = click.Context(cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                            help_option_names=HELP)
        parts += [f"## {' '.join(path)}", "", "```", cmd.get_help(ctx), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
