"""The `underbid` command: one click group per concern. Thin: it parses, calls the library and prints.

Groups: account, credits, escrow, order, provider, bid, lease, heartbeat, report, challenge,
market, bme, status, matcher, oracle, ubt, devnet, demo. Every command has --json; errors are one line
(`error: ...`) with exit code 1 (runtime) or 2 (usage).
"""

from __future__ import annotations

import click

from underbid.cli._common import UnderbidGroup


@click.group(cls=UnderbidGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="underbid")
def main() -> None:
    """Underbid: a settlement protocol for decentralized GPU compute.

    Buyers mint credits, deposit them and sign orders; providers stake UBT and sign bids; a matcher
    clears each round and settles it on chain. `underbid devnet up` starts a local chain and
    matcher; `underbid demo` runs a whole market on it.
    """


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _whole_short_help(command: click.Command) -> None:
    """Gives every command its whole first sentence as the line `--help` lists it by.

    Click otherwise cuts the sentence to the terminal's width with "...", which at 80 columns left
    most command lists unreadable; a set `short_help` is wrapped instead of cut.
    """
    if command.help and not command.short_help:
        command.short_help = _first_sentence(command.help)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _whole_short_help(sub)


def _register() -> None:
    from underbid.cli import account, buyer, devnet_cmd, info, leases, matcher_cmd, operator, provider

    for module in (account, buyer, provider, leases, info, matcher_cmd, operator, devnet_cmd):
        for command in module.COMMANDS:
            main.add_command(command)
    for command in main.commands.values():
        _whole_short_help(command)


_register()

__all__ = ["main"]
