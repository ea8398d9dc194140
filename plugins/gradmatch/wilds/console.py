"""What a run shows and hears on the terminal: the progress bar and Ctrl-C at a step boundary."""
from __future__ import annotations

import signal
import sys
import threading


class DeferredInterrupt:
    """While active (main thread, default SIGINT handler): the first Ctrl-C only sets
    ``requested``, so the run stops at a step boundary; a second one raises at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def progress_bar(total, initial, enabled, desc):
    """A tqdm bar on stderr (refreshed every 10 s when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True,
                mininterval=0.1 if interactive else 10.0)
