"""The reduce stage's own settings (`reduce:` in YAML, --reduce, --dims, --reduce-param, --fit-sample), checked
before any work. `names=False` checks the values alone (no registry lookups)."""
from __future__ import annotations

from ..errors import UserError


def check_settings(reduce, names: bool = True) -> None:
    """The reducer's name, its output size, its parameters and the streamed fit's sample."""
    dims = reduce.dims
    if isinstance(dims, bool) or not isinstance(dims, (int, float)) or dims <= 0:
        raise UserError(f"--dims {dims!r}: a positive number")
    if reduce.method == "umap" and dims != int(dims):
        raise UserError(f"--dims {dims}: UMAP needs a whole number of dimensions (a share of variance is for pca)")
    if not isinstance(reduce.params, dict):
        raise UserError("reduce params: expected a mapping of NAME: value")
    _check_fit_sample(reduce)
    if not names:
        return
    from ..backend import ALGORITHMS, check_keywords
    from . import REDUCERS, check_params

    if reduce.method not in REDUCERS:
        raise UserError(f"unknown reducer {reduce.method!r}; known: {', '.join(REDUCERS)}")
    check_params(reduce.method, dict(reduce.params))
    if reduce.method in ALGORITHMS:
        check_keywords(reduce.method, {k: v for k, v in reduce.params.items() if k != "knn"})


def _check_fit_sample(reduce) -> None:
    fit_sample = reduce.fit_sample
    if fit_sample is None:
        return
    if fit_sample < 2:
        raise UserError(f"--fit-sample {fit_sample}: must be at least 2")
    if reduce.method not in ("pca", "umap"):
        raise UserError(f"--fit-sample applies to --reduce pca or umap (got {reduce.method}): those can transform "
                        "rows they were not fitted on")
