"""Value checks shared by the clusterers' records: the same on both twins, before any work."""
from __future__ import annotations

from ..errors import UserError

METRICS = ("euclidean", "l1", "manhattan", "cityblock", "chebyshev", "cosine", "l2")


def check_range(params: dict, key: str, lo: float, hi: float, text: str) -> None:
    """`params[key]`, when given, is a number with lo <= value < hi; else one line saying `text`."""
    if key in params and params[key] is not None:
        v = params[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise UserError(f"--cluster-param {key}={v}: not a number ({text[0].lower() + text[1:]})")
        if not lo <= v < hi:
            raise UserError(f"--cluster-param {key}={v}: {text}")


def check_at_least_1(params: dict, *keys: str) -> None:
    """Each of `keys`, when given, is a number of at least 1."""
    for key in keys:
        check_range(params, key, 1, float("inf"), "must be at least 1")


def check_metric(params: dict) -> None:
    """`metric`, when given, is one the clusterers take on both twins."""
    if params.get("metric", "euclidean") not in METRICS:
        raise UserError(f"--cluster-param metric={params['metric']}: choose one of {', '.join(METRICS)}")


def check_choice(params: dict, key: str, default: str, choices: tuple[str, ...]) -> None:
    """`params[key]` (default `default`) is one of `choices`."""
    value = params.get(key, default)
    if value not in choices:
        raise UserError(f"--cluster-param {key}={value}: choose one of {', '.join(choices)}")
