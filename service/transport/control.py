"""The supervisor's control channels on Unix sockets in a private folder, not on loopback TCP.

BentoML 1.4 runs its workers under a circus arbiter whose control (ZeroMQ ROUTER) and event
(PUB) endpoints it puts on two free loopback TCP ports, with no authentication: anything that can
reach loopback (another local user, a sidecar sharing the pod's network) could send circus
commands (stop the server, add a watcher that runs a command as the server's user). Circus
itself accepts any ZeroMQ endpoint, and BentoML passes its arbiter only those two; so every
arbiter this process creates gets `ipc://` endpoints in a folder made by `tempfile.mkdtemp`
(mode 0700: only the server's user, and root, can connect), removed when the arbiter stops.
Only the supervisor creates an arbiter; in a worker the patch is installed and never used.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from typing import Any

PREFIX = "rnnserve-circus-"
_PATCHED = "_rnnserve_private_endpoints"


def private_endpoints(directory: str) -> dict[str, str]:
    """The arbiter's endpoint arguments, as Unix sockets in `directory`."""
    return {"endpoint": f"ipc://{os.path.join(directory, 'control')}",
            "pubsub_endpoint": f"ipc://{os.path.join(directory, 'events')}"}


def use_private_endpoints() -> None:
    """Make BentoML's circus arbiters listen on Unix sockets in a 0700 folder. Idempotent;
    nothing changes where Unix sockets are not available."""
    from bentoml._internal.utils import circus

    if os.name != "posix" or getattr(circus.Arbiter.__init__, _PATCHED, False):
        return
    original = circus.Arbiter.__init__

    @functools.wraps(original)
    def __init__(self: Any, watchers: Any, endpoint: str, pubsub_endpoint: str, *args: Any,
                 **kwargs: Any) -> None:
        directory = tempfile.mkdtemp(prefix=PREFIX)
        private = private_endpoints(directory)
        try:
            original(self, watchers, private["endpoint"], private["pubsub_endpoint"], *args, **kwargs)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        # BentoML's arbiter leaves its exit stack when it stops; the process's end is the backstop
        self.exit_stack.callback(shutil.rmtree, directory, ignore_errors=True)
        atexit.register(shutil.rmtree, directory, ignore_errors=True)

    setattr(__init__, _PATCHED, True)
    circus.Arbiter.__init__ = __init__

