"""``options={"progress": True}``: a tqdm progress bar fed from host callbacks.

tqdm is an optional dependency: ``require_tqdm`` is called at the front door (before
anything is traced) and names the install command; the bar itself is made on the host when
the compiled program first reports. A ``Bar`` belongs to one compiled program (a host
callback's closure outlives each run of it): each run opens a fresh bar and closes it when
the run's last problem ends. Between the two, the display is refreshed at most
``REFRESH_SECONDS`` apart, however often the program reports (the program reports at most
once per trip of its loop).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

# The display is redrawn at most this often (a few times a second); the final state is
# always drawn when the bar closes.
REFRESH_SECONDS = 0.2


def require_tqdm() -> None:
    """Raise a clear ``ImportError`` if tqdm (the progress bar) is not installed."""
    try:
        import tqdm  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "options['progress']=True shows a tqdm progress bar, and tqdm is not installed: "
            "pip install tqdm"
        ) from error


class Bar:
    """One progress bar per run of a compiled program, opened and closed from the host."""

    def __init__(self, unit: str, desc: str | None = None):
        self.unit = unit
        self.desc = desc
        self._bar: Any = None
        self._last_refresh = 0.0
        self._lock = threading.Lock()

    def open(self, total: int) -> None:
        """Start a new bar of ``total`` steps (closing one a previous run left open)."""
        from tqdm.auto import tqdm

        with self._lock:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=total, unit=self.unit, desc=self.desc, dynamic_ncols=True)
            self._last_refresh = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._bar is not None

    def show(
        self, n: int, postfix: str | None = None, *, close: bool = False, total: int | None = None
    ) -> None:
        """Set the count to ``n`` (and the postfix, and the total); redraw if the last
        redraw is at least ``REFRESH_SECONDS`` old, or ``close`` (which draws the final
        state and ends the bar)."""
        with self._lock:
            bar = self._bar
            if bar is None:
                return
            if total is not None:
                bar.total = total
            now = time.monotonic()
            if not close and now - self._last_refresh < REFRESH_SECONDS:
                return
            bar.n = n
            if postfix is not None:
                bar.set_postfix_str(postfix, refresh=False)
            if close:
                bar.close()
                self._bar = None
            else:
                bar.refresh()
                self._last_refresh = now

    def print(self, line: str) -> None:
        """Print ``line`` to stdout above the bar (as ``disp`` does beside ``progress``)."""
        with self._lock:
            if self._bar is None:
                print(line, flush=True)
            else:
                type(self._bar).write(line, file=sys.stdout)
                sys.stdout.flush()

    def close(self) -> None:
        """End the bar as it is (e.g. when a callback's exception ends the run)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
