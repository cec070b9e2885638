"""`--help` at 80 columns: every command list is whole (wrapped, never cut with "...")."""

from __future__ import annotations

import click
from click.testing import CliRunner

from underbid.cli import main


def _groups(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _groups(command, (*path, name))
    return found


def test_command_lists_are_not_cut_at_80_columns():
    runner = CliRunner()
    groups = _groups(main)
    assert len(groups) > 5  # the root and its groups (account, bid, credits, ...)
    for path in groups:
        result = runner.invoke(main, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        listed = result.output.split("Commands:", 1)[1]
        assert "..." not in listed, f"`underbid {' '.join(path)} --help` cuts a line:\n{listed}"
        assert all(len(line) <= 80 for line in listed.splitlines()), listed
