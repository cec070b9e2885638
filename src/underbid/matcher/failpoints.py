"""Named crash points for crash-safety tests, as in etcd's and FoundationDB's failpoints.

`UNDERBID_FAILPOINT=<name>` makes the process kill itself with SIGKILL when it reaches that
point, exactly as a power cut or an OOM kill would. Unset (always, outside tests) it is a no-op.
"""

from __future__ import annotations

import os
import signal

#: The points the matcher passes, in pipeline order.
POINTS = ("after_clearing", "after_signing", "after_broadcast")


def hit(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get("UNDERBID_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
