"""A graceful first Ctrl-C: the first SIGINT/SIGTERM asks the running trial to checkpoint and stop
after its current step (the next `afina sweep` resumes it); a second one stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP = threading.Event()  # set by the first Ctrl-C/SIGTERM; trial._Watch checkpoints and stops
_SHIELD = {"depth": 0, "held": False}  # inside shield(): one more Ctrl-C is held so the records get closed


def install_setup_stop() -> Callable[[], object]:
    """Before the first trial, Ctrl-C or SIGTERM stops the sweep at once, and also sets STOP.

    A KeyboardInterrupt that lands inside a finaliser or callback (a `__del__`, a weakref or GC
    callback during model loading, tokenizing or a store's connection clean-up) is printed by Python as
    "Exception ignored in ..." and dropped, and the sweep went on to run every trial. STOP survives
    that: `check_stop()` between the set-up steps, and the trial loop, see it. Returns the undo function.
    """
    STOP.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        STOP.set()
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook

    def dropped(unraisable) -> None:  # the interrupt is kept in STOP: no "Exception ignored" traceback
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    sys.unraisablehook = dropped

    def undo() -> None:
        for s, h in old.items():
            signal.signal(s, h)
        sys.unraisablehook = hook

    return undo


def check_stop() -> None:
    """Raise the interrupt a library may have swallowed during set-up."""
    if STOP.is_set():
        raise KeyboardInterrupt


def install_stop() -> Callable[[], object]:
    """First SIGINT/SIGTERM: graceful stop. Second: KeyboardInterrupt now. Returns the undo function.

    STOP is not cleared here: an interrupt during set-up (install_setup_stop) must still stop the sweep."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if STOP.is_set():
            if _SHIELD["depth"] and not _SHIELD["held"]:
                _SHIELD["held"] = True
                sys.stderr.write("\nstopping: closing the run's records first; press Ctrl-C again to abandon them\n")
                return
            raise KeyboardInterrupt
        STOP.set()
        sys.stderr.write("\nstopping: the running trial saves a checkpoint and stops after this step; press Ctrl-C again to stop at once\n")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


@contextmanager
def shield() -> Iterator[None]:
    """Closing a run's records (its MLflow status, the trial's reason): the graceful stop's own
    KeyboardInterrupt often lands a moment before the user's second Ctrl-C, which then cut the
    clean-up short and left the run RUNNING forever. Inside, that Ctrl-C waits; a third one does not."""
    _SHIELD["depth"] += 1
    try:
        yield
    finally:
        _SHIELD["depth"] -= 1
        if not _SHIELD["depth"]:
            _SHIELD["held"] = False
