"""A planned sweep run into its directory: runs done earlier kept, the rest run through the slots, the tables
rewritten after each run, the report at the end. Shared by the CLI and `run_sweep`; it prints nothing itself (its
messages go to `say`)."""
from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .fanout import _share_keys, check_fan_out, next_ready, open_slots
from .grid import Run, plan, varied_keys
from .options import SweepOptions
from .select import label_free
from .table import (
    _result_text,
    best_doc,
    effective_rank,
    make_row,
    open_sweep_dir,
    rankable,
    write_outputs,
    write_report,
)

log = logging.getLogger("gpuclust")


def _silent(text: str) -> None:
    pass


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: the finished runs are recorded in results.csv and a rerun resumes."""

    def __init__(self, recorded: int, total: int, out: Path):
        super().__init__(f"interrupted; {recorded} of {total} runs recorded in {out / 'results.csv'}")
        self.recorded, self.total, self.out = recorded, total, out


@dataclass
class SweepResult:
    """A finished sweep: its directory, runs, varied settings, table rows (in run order) and ranking metric."""

    out: Path
    runs: list[Run]
    varied: list[str]
    table: list[dict]
    rank_by: str
    done_earlier: int
    seconds: float
    picks: dict = field(default_factory=dict)  # dataset spec -> the label-free pick's best.json entry (or None)

    @property
    def by_id(self) -> dict[str, Run]:
        """The runs by their id ("0001")."""
        return {r.id: r for r in self.runs}

    def counts(self) -> dict[str, int]:
        """Rows per status: ok, error (the run's own settings) and internal_error."""
        return {s: sum(r["status"] == s for r in self.table) for s in ("ok", "error", "internal_error")}

    def best(self) -> dict:
        """The best.json document: the best run by the ranking metric, by AMI and by the label-free silhouettes, and
        the label-free pick with its confidence."""
        return best_doc(self.table, self.by_id, self.varied, self.rank_by, self.picks)


def check_rank_by(metric: str | None) -> None:
    """A ranking metric must be one a run can report (UserError otherwise)."""
    if metric is not None and metric not in rankable():
        raise UserError(f"--rank-by {metric}: not a metric of a run; choose one of ami, ari, nmi, "
                        "silhouette_umap_all, silhouette_umap, ... (the scalar keys of a run's metrics.json)")


def prepare(options: SweepOptions, count_gpus: bool = True) -> tuple[list[Run], list, list[str]]:
    """(runs, axes, GPUs for --gpus): every check that needs no sweep directory, so a refusal writes nothing."""
    check_rank_by(options.rank_by)
    runs, axes = plan(options)
    return runs, axes, check_fan_out(options, runs, count_gpus=count_gpus)


def run_planned(options: SweepOptions, runs: list[Run], axes, gpus: list[str], out: Path,
                say: Callable[[str], None] = _silent, on_run: Callable[[Run, dict], None] | None = None) -> SweepResult:
    """Run the planned grid into `out` through the slots the options ask for (a scheduler that does not answer is
    refused before the directory is made)."""
    slots = open_slots(options, gpus)
    try:
        return run_grid(options, runs, axes, out, slots, say, on_run)
    finally:
        slots.stop()  # whatever happened: no child run or Dask client outlives the sweep


def _same_umap_defaults(run_dir: Path) -> bool:
    """Whether a finished run's UMAP, if it ran one, used today's UMAP defaults (config.json's
    resolved.umap_defaults; runs from before the 200-epoch default lack it): a resumed sweep reruns the others rather
    than rank runs fitted under two settings together."""
    from ..reduce import UMAP_DEFAULTS_RULE

    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return True  # (what the run wrote is checked elsewhere; this only compares settings)
    if (config.get("reduce") or {}).get("method") != "umap":
        return True
    same = (config.get("resolved") or {}).get("umap_defaults") == UMAP_DEFAULTS_RULE
    if not same:
        log.info("sweep: %s was fitted under other UMAP defaults; running it again", run_dir.name)
    return same


def _earlier_rows(out: Path, runs: list[Run], varied: list[str]) -> tuple[dict[str, dict], set[str]]:
    """Rows of a previous attempt in `out`: ok runs whose metrics are there (done), failed runs (to be redone)."""
    previous = {}
    if (out / "results.csv").is_file():
        with open(out / "results.csv", newline="") as f:
            previous = {r["run"]: r for r in csv.DictReader(f)}
    rows: dict[str, dict] = {}
    done = set()
    for run in runs:
        old = previous.get(run.id)
        if old and old.get("status") == "ok" and (out / run.dir / "metrics.json").is_file() \
                and _same_umap_defaults(out / run.dir):
            rows[run.id] = make_row(run, varied, "ok", run_dir=out / run.dir)
            done.add(run.id)
        elif old and old.get("status") in ("error", "internal_error"):  # kept until redone below
            rows[run.id] = make_row(run, varied, old["status"], old.get("error", ""))
    return rows, done


def run_grid(options: SweepOptions, runs: list[Run], axes, out: Path, slots, say: Callable[[str], None] = _silent,
             on_run: Callable[[Run, dict], None] | None = None) -> SweepResult:
    """The sweep directory opened, every run not done earlier run through `slots`, the tables and the report.
    `on_run(run, row)` is called for each run done earlier and each run as it finishes."""
    lock = open_sweep_dir(out, runs, axes, options.force)
    try:
        return _run_locked(options, runs, out, slots, say, on_run or (lambda run, row: None))
    finally:
        lock.close()


def _run_locked(options: SweepOptions, runs: list[Run], out: Path, slots, say, on_run) -> SweepResult:
    varied = varied_keys(runs)
    by_id = {r.id: r for r in runs}
    rows, done = _earlier_rows(out, runs, varied)
    say(f"sweep: {len(runs)} runs in {out}" + (f", {len(done)} done earlier" if done else "")
        + f" (rerun with --output {out} to resume)")
    t0 = time.perf_counter()
    if slots.capacity > 1:
        say(f"sweep: up to {slots.capacity} runs at once ({slots.where}); each run's log in its log.txt")
    for run in runs:
        if run.id in done:
            say(f"[{run.index}/{len(runs)}] {run.label(varied)}  done earlier: {_result_text(rows[run.id])}")
            on_run(run, rows[run.id])
    try:
        _run_pending(options, runs, done, out, slots, rows, say, on_run)
    except KeyboardInterrupt:
        raise SweepInterrupted(len(rows), len(runs), out) from None
    rank_by = effective_rank(options.rank_by, rows.values())
    if options.rank_by and rank_by != options.rank_by:
        say(f"sweep: no run has {options.rank_by}; ranked by {rank_by}")
    picks = label_free(out, [rows[k] for k in sorted(rows)], by_id, varied)
    table = write_outputs(out, rows, by_id, varied, rank_by, picks)
    write_report(out, table, runs, varied, rank_by, picks)
    return SweepResult(out, runs, varied, table, rank_by, len(done), time.perf_counter() - t0, picks)


def _run_pending(options: SweepOptions, runs: list[Run], done: set[str], out: Path, slots, rows: dict, say,
                 on_run) -> None:
    """Start runs while slots are free and no running run computes what they share; record each as it finishes."""
    varied = varied_keys(runs)
    by_id = {r.id: r for r in runs}
    pending = [run for run in runs if run.id not in done]
    running: dict[str, tuple[Run, float]] = {}
    shared = {k for run in runs if run.id in done for k in _share_keys(run)}
    while pending or running:
        while len(running) < slots.capacity:
            run = next_ready(pending, [r for r, _ in running.values()], shared)
            if run is None:
                break
            pending.remove(run)
            running[run.id] = (run, time.perf_counter())
            slots.start(run, out)
        for run, (status, error) in slots.wait():
            _, t_run = running.pop(run.id)
            shared.update(_share_keys(run))
            rows[run.id] = make_row(run, varied, status, error, out / run.dir)
            write_outputs(out, rows, by_id, varied, effective_rank(options.rank_by, rows.values()))
            say(f"[{run.index}/{len(runs)}] {run.label(varied)}  {_result_text(rows[run.id])} "
                f"({time.perf_counter() - t_run:.1f}s)")
            on_run(run, rows[run.id])
