"""A run's settings checked before any work, so a typo costs no time and leaves no run directory, and the checks
that need the data, before the (long) encode stage. Each stage checks its own section (data, encode, reduce, cluster,
evaluate: their `check_settings`), the executor checks --gpus/--workers (distributed.check_executor); this module
adds the rules that join two sections and calls them in order."""
from __future__ import annotations

from .config import RunConfig, check_choices
from .errors import UserError


def check_values(cfg: RunConfig) -> None:
    """Ranges of the numbers and choices of the words, no names looked up (their types were checked when the config
    was merged)."""
    from . import curate, data, evaluate
    from .cluster import settings as cluster_settings
    from .encode import settings as encode_settings
    from .reduce import settings as reduce_settings

    check_choices(cfg)  # the words with fixed choices, from the schema in config.py
    cluster_settings.check_settings(cfg.cluster, names=False)
    reduce_settings.check_settings(cfg.reduce, names=False)
    data.check_settings(cfg.data, names=False)
    encode_settings.check_settings(cfg.encode, names=False)
    evaluate.check_settings(cfg.evaluate)
    curate.check_settings(cfg.curate)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise UserError(f"--seed {cfg.seed!r}: an integer from 0 to 2**32 - 1")
    if isinstance(cfg.gallery, bool) or not isinstance(cfg.gallery, int) or not 0 <= cfg.gallery <= 100:
        raise UserError(f"--gallery {cfg.gallery!r}: images per cluster, from 0 (no gallery) to 100")


def check_config(cfg: RunConfig, ready_data: bool = False, ready_encoder: bool = False) -> None:
    """Names and flags that can be checked before any work. `ready_data` / `ready_encoder`: the caller holds the
    dataset / encoder object, so their names are not looked up."""
    from . import data
    from .cluster import settings as cluster_settings
    from .distributed import check_executor
    from .encode import settings as encode_settings
    from .reduce import settings as reduce_settings

    check_values(cfg)
    check_executor(cfg)
    data.check_settings(cfg.data, names=not ready_data)
    encode_settings.check_settings(cfg.encode, names=not ready_encoder)
    reduce_settings.check_settings(cfg.reduce)
    cluster_settings.check_settings(cfg.cluster)
    if cfg.reduce.fit_sample is not None and cfg.cluster.k == "auto" and cfg.reduce.method != "umap":
        raise UserError("--k auto scores k in the UMAP space; with --fit-sample use --reduce umap")
    if cfg.data.spec.partition(":")[0] == "embeddings" and cfg.encode.decode != "cpu":
        raise UserError("--decode device: embeddings:PATH has no images to decode; drop it")


def check_against_data(cfg: RunConfig, ds) -> None:
    """Settings that depend on the data, checked before the (long) encode stage."""
    from .cluster.settings import check_against_rows
    from .encode.settings import check_against_data as check_decode

    check_decode(cfg.encode, ds, cfg.data.spec)
    check_against_rows(cfg.cluster, len(ds), ds.labels is not None)
