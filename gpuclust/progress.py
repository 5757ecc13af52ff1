"""Progress on stderr for the stages that run long with nothing to show (UMAP's fit, HDBSCAN, silhouettes ...).

One helper for every stage: `stage_progress(name, enabled)` opens a line with the stage's name and its elapsed time
(a tqdm bar without a total, as the encoder's bar is tqdm), refreshed by a thread; it appears only once the stage
has run SHOW_AFTER_S seconds, and leaves nothing behind when the stage ends (the run's log says "done in"). Code
inside a stage does not need the run's flag: `step(name)` relabels the open line ("reduce: umap fit"), `track`
counts a loop with a bar of its own and `umap_tqdm_kwds` turns on umap-learn's epoch bar, all only while a line is
open, so a quiet run (`-q`) or a notebook's estimator call shows nothing. Nothing here touches a device: the thread
only redraws text, so the GPU twin gains no synchronisation.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterable, Iterator

# Seconds a stage runs before its line appears (GPUCLUST_PROGRESS_AFTER overrides it: tests set 0).
SHOW_AFTER_S = 2.0
REFRESH_S = 1.0  # how often the elapsed time is redrawn

_open: list["_Line"] = []  # the stage line now shown (at most one: stages do not nest)


def show_after() -> float:
    """SHOW_AFTER_S, or the GPUCLUST_PROGRESS_AFTER environment variable's seconds when set."""
    try:
        return float(os.environ.get("GPUCLUST_PROGRESS_AFTER", SHOW_AFTER_S))
    except ValueError:
        return SHOW_AFTER_S


class _Line:
    """A tqdm bar without a total (name and elapsed time), redrawn every REFRESH_S by a daemon thread."""

    def __init__(self, name: str):
        from tqdm.auto import tqdm

        self.name = name
        self._start, self._delay = time.time(), show_after()
        self.bar = tqdm(total=None, desc=name, bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False,
                        delay=self._delay, miniters=0, mininterval=REFRESH_S, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._redraw, name=f"progress {name}", daemon=True)
        self._thread.start()

    def _redraw(self) -> None:
        while not self._stop.wait(REFRESH_S / 4):
            self.bar.update(0)  # tqdm draws only once `delay` has passed and at most every mininterval

    def label(self, text: str) -> None:
        # Drawn at once when the line already shows: a step quicker than REFRESH_S would otherwise end before the
        # next redraw and never be named. Before the line's delay has passed, the first redraw shows it.
        self.bar.set_description_str(text, refresh=time.time() - self._start >= self._delay)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.close()


def active() -> bool:
    """Whether a stage line is open (a run with progress on is inside a stage)."""
    return bool(_open)


@contextmanager
def stage_progress(name: str, enabled: bool = True) -> Iterator[None]:
    """Show `name` and the elapsed time on stderr while the block runs (after SHOW_AFTER_S), when `enabled`.

    Inside an open line this only relabels it "outer: name" for the block. Log records go through tqdm meanwhile,
    so a log line does not land in the middle of the progress line."""
    if not enabled:
        yield
        return
    if _open:
        line, before = _open[-1], _open[-1].bar.desc
        line.label(f"{line.name}: {name}")
        try:
            yield
        finally:
            line.label(before)
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    line = _Line(name)
    _open.append(line)
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            yield
    finally:
        _open.remove(line)
        line.close()


def step(name: str):
    """A labelled part of a stage (`stage_progress(name)` when a line is open, else nothing)."""
    return stage_progress(name) if _open else nullcontext()


def track(iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
    """`iterable` counted by a tqdm bar below the stage's line while a line is open; else `iterable` itself."""
    if not _open:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True,
                delay=show_after())


def umap_tqdm_kwds(desc: str = "umap epochs") -> dict[str, Any]:
    """umap-learn's `tqdm_kwds`: its epoch bar on while a line is open (without its `verbose` prints), else off.
    No file object in it: a fitted model is pickled (Dask workers, caches); tqdm writes to stderr by default."""
    return {"disable": not _open, "desc": desc, "leave": False, "dynamic_ncols": True}

