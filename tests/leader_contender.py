"""A process that contends for a matcher's leader lock and reports, one line each, what it sees.

Run as `python -m tests.leader_contender <postgres url> <matcher address>` by the leadership tests:
prints `follower` at start, `elected` and `lost` as they happen, and, while it believes it leads,
`fenced: <why>` when the round-trip check before a submission (`ensure_leader`) refuses it.
"""

from __future__ import annotations

import sys
import time

from underbid.matcher.leadership import NotLeader, PostgresLeadership


def main(url: str, identity: str) -> None:
    def say(line: str) -> None:
        print(line, flush=True)

    leadership = PostgresLeadership(url, identity)
    say("follower")
    leadership.start(on_elected=lambda: say("elected"), on_lost=lambda: say("lost"))
    while True:
        # As the matcher does before signing and broadcasting: a zombie learns here it is one.
        if leadership.is_leader:
            try:
                leadership.ensure_leader()
            except NotLeader as refused:
                say(f"fenced: {refused}")
        time.sleep(0.1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
