"""A graceful first Ctrl-C: the first SIGINT/SIGTERM asks the running trial to checkpoint and stop
after its current step (the next `afina sweep` resumes it); a second one stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

STOP = threading.Event()  # set by the first Ctrl-C/SIGTERM; trial._Watch checkpoints and stops


def install_stop() -> Callable[[], object]:
    """First SIGINT/SIGTERM: graceful stop. Second: KeyboardInterrupt now. Returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    STOP.clear()

    def handler(signum, frame):
        if STOP.is_set():
            raise KeyboardInterrupt
        STOP.set()
        sys.stderr.write("\nstopping: the running trial saves a checkpoint and stops after this step; press Ctrl-C again to stop at once\n")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]
