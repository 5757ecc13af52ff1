"""A sweep's options as one typed object: what `python -m gpuclust.sweep`'s flags say and what `run_sweep`'s
arguments say, so the library functions never see an argparse Namespace."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class SweepOptions:
    """Everything a sweep needs besides its runs' own settings.

    The grid is laid out in three layers, each over the one before: the sweep file (`config`: its `base:` and
    `grid:`), then `base` (a RunConfig or a nested mapping like the file's `base:`) and `grid` (setting -> list of
    values, as the file's `grid:`; an entry replaces the file's entries for the same setting), then `overrides` (a
    nested mapping over the base, e.g. the CLI's --limit, --cache-dir and --device).
    """

    config: str | None = None  # a sweep YAML file: `base:` and `grid:`
    base: Any = None  # RunConfig or nested mapping over the file's base
    grid: Mapping[str, list] = field(default_factory=dict)  # axes over the file's grid
    overrides: Mapping[str, Any] = field(default_factory=dict)  # nested settings over the base
    output: str | None = None  # the sweep directory (the same one resumes)
    force: bool = False  # discard the results of another grid in `output`
    rank_by: str | None = None  # None: ami with labels, else silhouette_umap_all
    jobs: int | None = None  # runs at once, each in its own process
    gpus: int | None = None  # fan the runs out over this many GPUs of this machine
    scheduler_address: str | None = None  # run the grid on an existing Dask cluster
    top: int = 20  # rows of the ranked table the CLI prints
    dry_run: bool = False  # list the grid's runs, run nothing
    quiet: bool = False  # print only errors
    verbose: bool = False  # also each run's stage log

    @property
    def fanned_out(self) -> bool:
        """Whether runs go to child processes or a Dask cluster rather than run one by one in this process."""
        return self.jobs is not None or self.gpus is not None or bool(self.scheduler_address)


# Settings the sweep itself owns, which a flat setting must not name: they are arguments of their own.
_NOT_SETTINGS = {"output"}


# Field names shared by several sections: a flat setting cannot say which one it means.
_HINTS = {"spec": "datasets=/encoders=", "method": "reducers=/clusterers=", "params": "base= or grid="}


def flat_names() -> dict[str, str]:
    """Each run setting that a bare name identifies -> its dotted key (limit -> data.limit, seed -> seed)."""
    from ..config import RunConfig

    seen: dict[str, list[str]] = {}
    default = RunConfig()
    for top in dataclasses.fields(RunConfig):
        section = getattr(default, top.name)
        if dataclasses.is_dataclass(section):
            for f in dataclasses.fields(section):
                seen.setdefault(f.name, []).append(f"{top.name}.{f.name}")
        elif top.name not in _NOT_SETTINGS:
            seen.setdefault(top.name, []).append(top.name)
    return {name: keys[0] for name, keys in seen.items() if len(keys) == 1}


def nested_settings(settings: Mapping[str, Any]) -> dict:
    """Flat run settings (limit=2000, device="cpu", seed=0) as the nested mapping a YAML `base:` would hold."""
    names = flat_names()
    out: dict = {}
    for name, value in settings.items():
        if name not in names:
            raise UserError(_unknown_setting(name, names))
        head, _, leaf = names[name].partition(".")
        if leaf:
            out.setdefault(head, {})[leaf] = value
        else:
            out[head] = value
    return out


def _unknown_setting(name: str, names: dict[str, str]) -> str:
    if name in _HINTS:
        return f"{name}=: several sections have a {name!r} setting; use {_HINTS[name]}"
    if name in _NOT_SETTINGS:
        return f"{name}=: the sweep names run directories itself; output= is the sweep directory"
    return f"{name}=: not a run setting; known: {', '.join(sorted(names))}"


def base_mapping(base) -> dict:
    """`base` (None, a RunConfig or a nested mapping) as a nested mapping of run settings."""
    if base is None:
        return {}
    if dataclasses.is_dataclass(base) and not isinstance(base, type):
        doc = base.to_dict() if hasattr(base, "to_dict") else dataclasses.asdict(base)
        if doc.get("output") is None:
            doc.pop("output", None)  # a RunConfig's default; `base.output` set on purpose is refused later
        return doc
    if not isinstance(base, Mapping):
        raise UserError(f"base: expected a RunConfig or a mapping of run settings, got {type(base).__name__}")
    return dict(base)
