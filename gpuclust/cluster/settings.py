"""The cluster stage's own settings (`cluster:` in YAML, --cluster, --k, --k-range, --cluster-param), checked before
any work. `names=False` checks the values alone (no registry lookups)."""
from __future__ import annotations

from ..errors import UserError


def _whole(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()


def check_settings(cluster, names: bool = True) -> None:
    """The clusterer's name, k, the k-range and its parameters (checked by its record, and against its class)."""
    k, kr = cluster.k, cluster.k_range
    if not (k is None or k == "auto" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
        raise UserError(f"--k {k!r}: a positive integer or auto")
    whole = isinstance(kr, (list, tuple)) and all(_whole(v) for v in kr)
    if not (whole and len(kr) == 2 and 2 <= kr[0] <= kr[1]):
        raise UserError(f"k_range {kr!r}: two whole numbers [MIN, MAX] with 2 <= MIN <= MAX (--k-range MIN:MAX)")
    if not isinstance(cluster.params, dict):
        raise UserError("cluster params: expected a mapping of NAME: value")
    if not names:
        return
    from ..backend import check_keywords
    from . import CLUSTERERS

    if cluster.method not in CLUSTERERS:
        raise UserError(f"unknown clusterer {cluster.method!r}; known: {', '.join(CLUSTERERS)}")
    CLUSTERERS[cluster.method].check(dict(cluster.params))  # before any work, not after the encode
    check_keywords(cluster.method, {k: v for k, v in cluster.params.items() if k != "threshold_normalize"})


def check_against_rows(cluster, n_rows: int, has_labels: bool) -> None:
    """k against the data: a clusterer that takes k needs one (or labels to take it from), at most one per row."""
    from . import CLUSTERERS

    algo = CLUSTERERS[cluster.method]
    if not algo.needs_k(cluster.params):
        return
    k = cluster.k if cluster.k is not None else cluster.params.get(algo.k_param)
    if k == "auto":
        return
    if k is None and not has_labels:
        raise UserError(f"{cluster.method} needs --k N (or --k auto): the dataset has no labels to take the number "
                        "of classes from")
    if k is not None and not 1 <= k <= n_rows:
        raise UserError(f"--k {k}: must be between 1 and the number of images ({n_rows})")
