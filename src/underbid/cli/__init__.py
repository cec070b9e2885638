"""The `underbid` command: one click group per concern. Thin: it parses, calls the library and prints.

Groups: account, credits, escrow, order, provider, bid, lease, heartbeat, report, challenge,
market, bme, status, matcher, devnet, demo. Every command has --json; errors are one line
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


def _register() -> None:
    from underbid.cli import account, buyer, devnet_cmd, info, leases, matcher_cmd, provider

    for module in (account, buyer, provider, leases, info, matcher_cmd, devnet_cmd):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

__all__ = ["main"]
