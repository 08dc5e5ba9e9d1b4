"""Named crash points, for proving exactly-once behaviour by killing the process for real.

Off unless `PAYABLES_FAILPOINTS` lists point names (comma-separated), e.g.
``after_commit:schedule_payment`` (the payment's transaction has committed, the graph has
not yet checkpointed) or ``verifier`` (entering the verifier). A listed point sends SIGKILL
to the current process: no cleanup, no flush, exactly what a crash or an OOM kill does.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "PAYABLES_FAILPOINTS"


def hit(name: str) -> None:
    """Die here, at once, if the environment lists ``name``."""
    listed = os.environ.get(ENV_VAR, "")
    if listed and name in {point.strip() for point in listed.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)
