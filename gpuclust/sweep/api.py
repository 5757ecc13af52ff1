"""`run_sweep`: a sweep from Python, returned as a pandas DataFrame (one row per run, as results.csv) with the
best.json document, label-free pick included, in `frame.attrs["best"]`."""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .grid import replaced_keys
from .options import SweepOptions, nested_settings
from .runner import SweepResult, prepare, run_planned
from .table import columns

if TYPE_CHECKING:
    import pandas

log = logging.getLogger("gpuclust.sweep")


# run_sweep's lists -> the whole-section grid axis each one is (an entry is a name or a mapping of that section).
NAMED_AXES = {"datasets": "data", "encoders": "encode", "reducers": "reduce", "clusterers": "cluster"}


def run_sweep(datasets=None, encoders=None, reducers=None, clusterers=None, *, base=None,
              grid: Mapping[str, list] | None = None, output: str | Path | None = None, rank_by: str | None = None,
              progress: bool = True, jobs: int | None = None, gpus: int | None = None,
              scheduler_address: str | None = None, force: bool = False, **settings: Any) -> "pandas.DataFrame":
    """Run every combination of the given datasets, encoders, reducers and clusterers (and of `grid`'s extra axes)
    and return one row per run, as results.csv.

    Each list holds names (`"digits"`, `"pixels"`, `"pca"`, `"kmeans"`) or mappings of that stage's settings
    (`{"method": "hdbscan", "params": {"min_cluster_size": 20}}`); None keeps the base's. `base` is a RunConfig or
    a nested mapping like a sweep file's `base:`; `grid` maps a setting to its values like the file's `grid:`
    (`{"reduce.dims": [10, 50]}`); `settings` are flat run settings over the base (`limit=2000, device="cpu",
    seed=0`). Runs go one at a time in this process unless `jobs`, `gpus` or `scheduler_address` fan them out.

    With `output=None` the sweep runs in a temporary directory removed at the end; otherwise `output` is a sweep
    directory as the CLI writes it (rerunning resumes). Failed runs are rows with status `error` or
    `internal_error`; bad input raises UserError before anything runs. `frame.attrs["best"]` is the best.json
    document (`["label_free"]` is the label-free pick with its confidence; `["best"]["ami"]` the best run by AMI
    when the data has labels) and `frame.attrs["output"]` the directory kept (None for a temporary one).
    """
    options = sweep_options(datasets, encoders, reducers, clusterers, base=base, grid=grid, output=output,
                            rank_by=rank_by, jobs=jobs, gpus=gpus, scheduler_address=scheduler_address, force=force,
                            settings=settings)
    runs, axes, visible = prepare(options)
    with _sweep_directory(output) as out, _progress(len(runs), progress) as on_run:
        result = run_planned(options, runs, axes, visible, out, say=log.info, on_run=on_run)
        frame = results_frame(result)
        frame.attrs["best"] = json.loads((out / "best.json").read_text())
    frame.attrs["output"] = None if output is None else out
    _log_failures(result)
    return frame


def sweep_options(datasets=None, encoders=None, reducers=None, clusterers=None, *, base=None,
                  grid: Mapping[str, list] | None = None, output: str | Path | None = None,
                  settings: Mapping[str, Any] | None = None, **sweep: Any) -> SweepOptions:
    """run_sweep's arguments as SweepOptions (`sweep` holds rank_by, jobs, gpus, scheduler_address, force)."""
    axes: dict[str, list] = {}
    lists = {"datasets": datasets, "encoders": encoders, "reducers": reducers, "clusterers": clusterers}
    for name, values in lists.items():
        if values is not None:
            axes[NAMED_AXES[name]] = _as_list(values, name)
    if grid is not None and not isinstance(grid, Mapping):
        raise UserError(f"grid=: expected a mapping of setting -> list of values, got {type(grid).__name__}")
    for key, values in (grid or {}).items():
        clash = [name for name, section in NAMED_AXES.items()
                 if section in axes and replaced_keys(str(key)) & replaced_keys(section)]
        if clash:
            raise UserError(f"grid[{key!r}] and {clash[0]}= both vary the same setting; give it once")
        axes[str(key)] = list(values) if isinstance(values, tuple) else values
    return SweepOptions(base=base, grid=axes, overrides=nested_settings(settings or {}),
                        output=None if output is None else str(output), **sweep)


def _as_list(values, name: str) -> list:
    """One entry (a name or a mapping) or a list of them, as a non-empty list."""
    if isinstance(values, (str, Mapping)):
        return [values]
    if not isinstance(values, (list, tuple)):
        raise UserError(f"{name}=: expected a name, a mapping of settings, or a list of them; got "
                        f"{type(values).__name__}")
    if not values:
        raise UserError(f"{name}=: an empty list; give at least one, or None for the base's")
    return list(values)


@contextlib.contextmanager
def _sweep_directory(output: str | Path | None) -> Iterator[Path]:
    """`output`, or a temporary directory removed when the sweep is done."""
    if output is not None:
        yield Path(output).expanduser()
        return
    with tempfile.TemporaryDirectory(prefix="gpuclust-sweep-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _progress(total: int, enabled: bool):
    """A progress bar over the runs (tqdm, as the encoder's); yields the callback that advances it."""
    from tqdm import tqdm

    with tqdm(total=total, desc="sweep", unit="run", disable=not enabled) as bar:
        def on_run(run, row: dict) -> None:
            bar.set_postfix_str(f"run {run.id} {row['status']}", refresh=False)
            bar.update(1)

        yield on_run


def results_frame(result: SweepResult) -> "pandas.DataFrame":
    """The sweep's table as a DataFrame with results.csv's columns, one row per run in run order."""
    import pandas as pd

    return pd.DataFrame.from_records(result.table, columns=columns(result.table, result.varied))


def _log_failures(result: SweepResult) -> None:
    counts = result.counts()
    failed = counts["error"] + counts["internal_error"]
    if failed:
        first = next(r for r in result.table if r["status"] != "ok")
        log.warning("sweep: %d of %d runs failed (status and error columns); first: run %s: %s", failed,
                    len(result.runs), first["run"], first["error"])
