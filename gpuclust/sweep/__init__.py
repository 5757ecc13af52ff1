"""Sweeps: a grid of runs over one base configuration, with a results table that survives kills; from Python
(`run_sweep(...)` -> a pandas DataFrame) or from the command line (`python -m gpuclust.sweep`).

A sweep is the product of a few lists of settings (datasets x encoders x reducers x clusterers x parameters). Each
grid point is an ordinary run (`run_pipeline`) with its own run directory, so a sweep adds no second way to compute
anything; the embedding store and the reduction cache make the repeats cheap (one encoding per dataset x encoder,
one PCA/UMAP fit per reduction). The grid is ordered so that runs sharing a dataset, encoder and reduction are
adjacent.

The sweep directory holds `sweep.json` (the resolved runs, which a rerun must match to resume), `results.csv` and
`results.parquet` (one row per finished run, rewritten atomically after each run), `best.json` (the best run by AMI,
by the label-free `silhouette_umap_all` and `silhouette_umap`, and by --rank-by), `by_setting.csv` (each varied
setting's values by their mean over the rest of the grid) and `runs/NNNN-<slug>/`.
A rerun skips every run recorded `ok` whose directory has its metrics.json, so a killed sweep (even SIGKILL) resumes
where it was; runs are seeded, so the final table equals an uninterrupted sweep's.

The command's exit codes: 0 every run ok; 2 bad input before anything ran (one line on stderr), or some runs failed
on their own settings (recorded as `error` rows; the others ran); 1 some run failed with an internal error
(`internal_error` rows, traceback in the run's error.txt); 130 interrupted. `run_sweep` raises UserError for bad
input and returns failed runs as rows.
"""
from __future__ import annotations

import sys
import types

from .api import run_sweep, sweep_options
from .cli import cli, get_args_parser, main, options_from_args, parse_options, run_command
from .fanout import _outcome, _share_keys, check_fan_out, child_main, next_ready, open_slots, visible_gpus
from .grid import Run, build_axes, plan, varied_keys
from .options import SweepOptions
from .runner import SweepInterrupted, SweepResult, prepare, run_grid, run_planned
from .table import best_doc, default_rank

__all__ = ["run_sweep", "SweepOptions", "SweepResult", "SweepInterrupted", "Run", "main", "cli", "get_args_parser",
           "parse_options", "options_from_args", "run_command", "sweep_options", "prepare", "plan", "build_axes",
           "varied_keys", "run_planned", "run_grid", "best_doc", "default_rank", "check_fan_out", "open_slots",
           "next_ready", "visible_gpus", "child_main", "_outcome", "_share_keys"]


class _CallableModule(types.ModuleType):
    """`gpuclust.sweep(...)` is `run_sweep(...)`: the package and the function share the name `sweep` on
    `gpuclust`, and whichever of the two the attribute holds, calling it runs a sweep."""

    def __call__(self, *args, **kwargs):
        return run_sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    raise SystemExit(main())
