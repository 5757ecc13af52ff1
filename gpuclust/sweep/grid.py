"""A sweep's grid: the YAML grid and the options' axes laid over one base configuration, expanded into ordered runs,
each checked before anything runs."""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import UserError
from .options import SweepOptions, base_mapping

log = logging.getLogger("gpuclust.sweep")


# Grid axes from the outermost to the innermost (other top-level settings, e.g. device, go outside all of them), so
# consecutive runs share the stored embeddings and reduced spaces.
STAGES = ("data", "encode", "seed", "reduce", "cluster", "evaluate")


# A plain string entry in a whole-section axis names this field: `cluster: [kmeans, {method: hdbscan, ...}]`.
SECTION_NAME_FIELD = {"data": "spec", "encode": "spec", "reduce": "method", "cluster": "method"}


def _check_key(key: str) -> None:
    """A grid key is a top-level setting, a section, `section.field`, or `section.params.NAME`."""
    from ..config import RunConfig

    default = RunConfig()
    parts = key.split(".")
    top = [f.name for f in dataclasses.fields(RunConfig) if f.name != "output"]
    if parts[0] not in top:
        why = " (the sweep names run directories itself)" if parts[0] == "output" else ""
        raise UserError(f"unknown grid key {key!r}: it must start with one of {', '.join(top)}{why}")
    if len(parts) == 1:
        return
    section = getattr(default, parts[0])
    if not dataclasses.is_dataclass(section):
        raise UserError(f"unknown grid key {key!r}: {parts[0]} is a single setting")
    fields = [f.name for f in dataclasses.fields(section)]
    if parts[1] not in fields:
        raise UserError(f"unknown grid key {key!r}: {parts[0]} has {', '.join(fields)}")
    if len(parts) > 2 and (len(parts) > 3 or not isinstance(getattr(section, parts[1]), dict)):
        raise UserError(f"unknown grid key {key!r}: only {parts[0]}.params.NAME goes below a field")


def _apply(cfg, key: str, value):
    """`cfg` with one grid value set; a whole-section entry is merged like a YAML section."""
    from ..config import merge

    parts = key.split(".")
    if len(parts) == 1:
        if dataclasses.is_dataclass(getattr(cfg, key)):
            if isinstance(value, str) and key in SECTION_NAME_FIELD:
                value = {SECTION_NAME_FIELD[key]: value}
            if not isinstance(value, dict):
                raise UserError(f"grid.{key}: entries are names or mappings of {key} settings, got {value!r}")
        return merge(cfg, {key: value}, where="grid")
    if len(parts) == 2:
        return merge(cfg, {parts[0]: {parts[1]: value}}, where="grid")
    params = {**getattr(getattr(cfg, parts[0]), parts[1]), parts[2]: value}
    return merge(cfg, {parts[0]: {parts[1]: params}}, where="grid")


def _axis_order(key: str) -> tuple[int, int]:
    head = key.split(".")[0]
    return (STAGES.index(head) if head in STAGES else -1, "." in key)  # a section entry before its dotted keys


def replaced_keys(key: str) -> set[str]:
    """The grid keys that an axis on `key` replaces in the sweep file: the same setting, and for a section's name
    (cluster.method) the whole-section axis too (cluster: [kmeans, {method: hdbscan, ...}]), and the other way round."""
    head = key.split(".")[0]
    name = SECTION_NAME_FIELD.get(head)
    if name and key in (head, f"{head}.{name}"):
        return {head, f"{head}.{name}"}
    return {key}


def build_axes(grid: dict, over: Mapping[str, list] | None = None) -> list[tuple[str, list]]:
    """The YAML grid with the axes of `over` (the CLI's axis flags, run_sweep's lists) laid over it: an axis there
    replaces the file's entries for the same setting."""
    if not isinstance(grid, dict):
        raise UserError("grid: expected a mapping of setting -> list of values")
    axes = dict(grid)
    for key, values in (over or {}).items():
        for k in replaced_keys(key):
            axes.pop(k, None)
        axes[key] = values
    for key, values in axes.items():
        _check_key(str(key))
        if not isinstance(values, list) or not values:
            raise UserError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
    return sorted(axes.items(), key=lambda kv: _axis_order(kv[0]))


def base_config(data: dict, options: SweepOptions):
    """The runs' common configuration: defaults, the sweep file's `base:` (`data`), `options.base`, then
    `options.overrides`."""
    from ..config import RunConfig, merge

    cfg = RunConfig()
    for layer in (data, base_mapping(options.base)):
        if not isinstance(layer, dict):
            raise UserError("base: expected a mapping of run settings (the schema of gpuclust.run --config)")
        if "output" in layer:
            raise UserError("base.output: the sweep names run directories itself; use --output for the sweep "
                            "directory")
        cfg = merge(cfg, layer, where="base")
    return merge(cfg, dict(options.overrides), where="settings")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))  # an empty mapping (no params) adds no column
        elif k != "output":
            out[f"{prefix}{k}"] = v
    return out


def _short(spec: str) -> str:
    return spec.rstrip("/").split("/")[-1]


def _cell(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple, dict)) else v


@dataclass
class Run:
    """One grid point of a sweep: its settings (a RunConfig whose output is its run directory) and its names."""

    index: int  # 1-based position in the grid
    cfg: object  # RunConfig with output = the run directory relative to the sweep directory
    flat: dict  # dotted settings -> value

    @property
    def id(self) -> str:
        """The run's 4-digit id, its row key in results.csv."""
        return f"{self.index:04d}"

    @property
    def dir(self) -> str:
        """The run directory, relative to the sweep directory."""
        return self.cfg.output

    def main_parts(self) -> list[str]:
        """Dataset, encoder, reduction and clusterer: the start of its label and directory name."""
        r = self.cfg.reduce
        red = f"{r.method}{r.dims}" if r.method in ("pca", "umap") else r.method
        return [_short(self.cfg.data.spec), _short(self.cfg.encode.spec), red, self.cfg.cluster.method]

    def label(self, varied: list[str]) -> str:
        """The log line's name for this run: dataset encoder reduction clusterer, then any other varied setting."""
        shown = {"data.spec", "encode.spec", "reduce.method", "reduce.dims", "cluster.method"}
        extra = [f"{k.split('.')[-1]}={_cell(self.flat.get(k))}" for k in varied if k not in shown
                 and not (".params." in k and self.flat.get(k) is None)]  # a parameter this run's method lacks
        return " ".join(self.main_parts() + extra)


def _slug(parts: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-")[:60] or "run"


def expand(base, axes: list[tuple[str, list]]) -> list[Run]:
    """The runs of the product of the axes over `base`, each with its run directory and flat settings."""
    runs = []
    for i, combo in enumerate(itertools.product(*(values for _, values in axes)), 1):
        cfg = base
        for (key, _), value in zip(axes, combo):
            cfg = _apply(cfg, key, value)
        run = Run(i, cfg, {})
        run.cfg = dataclasses.replace(cfg, output=f"runs/{i:04d}-{_slug(run.main_parts())}")
        run.flat = _flatten(json.loads(json.dumps(run.cfg.to_dict(), default=str)))
        runs.append(run)
    return runs


def varied_keys(runs: list[Run]) -> list[str]:
    """The dotted settings that differ between runs: the columns and labels that tell runs apart."""
    keys = list(dict.fromkeys(k for r in runs for k in r.flat))
    return [k for k in keys if len({json.dumps(r.flat.get(k), sort_keys=True) for r in runs}) > 1]


def check_run(cfg) -> None:
    """Everything about one grid point that can be known without its data (`check_config`)."""
    from ..pipeline import check_config

    check_config(cfg)


def plan(options: SweepOptions) -> tuple[list[Run], list[tuple[str, list]]]:
    """The sweep's runs in grid order and its axes; every grid point is checked before anything is written."""
    from ..config import load_yaml

    doc = load_yaml(options.config) if options.config else {}
    unknown = sorted(set(doc) - {"base", "grid"})
    if unknown:
        raise UserError(f"--config {options.config}: unknown top-level key(s) {', '.join(unknown)}; a sweep file has "
                        "`base:` (run settings) and `grid:` (setting -> list of values)")
    base = base_config(doc.get("base") or {}, options)
    axes = build_axes(doc.get("grid") or {}, options.grid)
    runs = expand(base, axes)
    varied = varied_keys(runs)
    for run in runs:
        try:
            check_run(run.cfg)
        except UserError as exc:
            raise UserError(f"grid point {run.index} of {len(runs)} ({run.label(varied)}): {exc}") from None
    return runs, axes


def _normal(obj):
    return json.loads(json.dumps(obj, default=str))
