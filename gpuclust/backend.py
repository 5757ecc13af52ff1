"""The backend: numpy + scikit-learn/umap-learn (CPU twin) or CuPy + cuML (GPU twin), chosen once per run.

Stage code is written once against `backend.xp` and builds estimators through `make_estimator`, which reads the
twin table `ALGORITHMS`. Nothing outside this module and the report decides between host and device.
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .errors import UserError, require

log = logging.getLogger(__name__)

GPU_INSTALL = "pip install 'gpuclust[gpu]' (or conda: see environment.yml)"


@dataclass(frozen=True)
class Backend:
    """Array module and friends for one twin. `name` is "cpu" or "gpu"."""

    name: str
    xp: ModuleType
    special: ModuleType  # scipy.special or cupyx.scipy.special (gammaln for AMI)

    @property
    def is_gpu(self) -> bool:
        """Whether this is the GPU twin."""
        return self.name == "gpu"

    @property
    def torch_device(self) -> str:
        """torch's name for this twin's device: "cuda" or "cpu"."""
        return "cuda" if self.is_gpu else "cpu"

    def asarray(self, x: Any, dtype: Any = None):
        """x as this twin's array (numpy or CuPy), copied only where it must move or change type (a device array
        comes to the host for the CPU twin)."""
        if not self.is_gpu and is_device_array(x):
            x = x.get()
        return self.xp.asarray(x, dtype=dtype)

    def takes_device_arrays(self, obj: Any) -> bool:
        """Whether a user's ready estimator computes on this twin's device: cuML's objects take device arrays on the
        GPU twin; everything else (scikit-learn, umap-learn, hdbscan) takes host arrays."""
        return self.is_gpu and type(obj).__module__.split(".")[0] == "cuml"

    def from_torch(self, tensor):
        """Torch tensor -> xp array without a host copy on the GPU (DLPack)."""
        if self.is_gpu:
            import torch

            # cupy reads the memory on its own stream: finish torch's kernels first.
            torch.cuda.current_stream(tensor.device).synchronize()
            return self.xp.from_dlpack(tensor.detach())
        return tensor.detach().cpu().numpy()

    def to_host(self, x: Any) -> Any:
        """xp array or scalar -> numpy array or Python scalar. Used only where results leave the pipeline."""
        if hasattr(x, "__cuda_array_interface__"):
            x = x.get()
        if isinstance(x, np.generic) or (isinstance(x, np.ndarray) and x.ndim == 0):
            return x.item()
        return x

    def synchronize(self) -> None:
        """Wait for the device's queued work (timings then count it); nothing on the CPU twin."""
        if self.is_gpu:
            self.xp.cuda.Device().synchronize()

    def release_torch_cache(self) -> None:
        """Hand torch's cached free device blocks back to the driver, so cuML/RMM can allocate them (GPU twin)."""
        if self.is_gpu:
            import torch

            torch.cuda.empty_cache()

    def torch_peak_bytes(self) -> int | None:
        """The most device memory torch held at once in this process (GPU twin), else None."""
        if not self.is_gpu:
            return None
        import torch

        return int(torch.cuda.max_memory_allocated())


def is_device_array(x: Any) -> bool:
    """Whether x lives on a GPU (CuPy, or anything with the CUDA array interface)."""
    return hasattr(x, "__cuda_array_interface__")


def backend_for(x: Any, device: str) -> Backend:
    """The twin for `device`, where "auto" follows the data: a device array runs on the GPU twin."""
    if device == "auto" and is_device_array(x):
        return resolve_backend("gpu")
    return resolve_backend(device)


def cpu_backend() -> Backend:
    """The CPU twin: numpy and scipy."""
    import scipy.special

    return Backend("cpu", np, scipy.special)


def gpu_available() -> tuple[bool, str]:
    """(usable, reason). Usable means CuPy sees a CUDA device and cuML imports."""
    try:
        import cupy
    except ImportError:
        return False, f"--device gpu needs CuPy and cuML, which are not installed: {GPU_INSTALL}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # cupy raises CUDARuntimeError without a driver
        n = 0
    if n == 0:
        return False, "--device gpu needs a CUDA GPU, and none is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    try:
        import cuml  # noqa: F401
    except ImportError:
        return False, f"--device gpu needs cuML, which is not installed: {GPU_INSTALL}"
    return True, ""


def gpu_backend() -> Backend:
    """The GPU twin: CuPy and cupyx.scipy; UserError naming what is missing when it cannot run here."""
    ok, reason = gpu_available()
    if not ok:
        raise UserError(reason)
    import cupy
    import cupyx.scipy.special

    return Backend("gpu", cupy, cupyx.scipy.special)


def resolve_backend(device: str) -> Backend:
    """`auto` picks the GPU twin when it can run, else the CPU twin; `gpu` insists; `cpu` never touches CUDA."""
    if device == "cpu":
        return cpu_backend()
    if device == "gpu":
        return gpu_backend()
    if device == "auto":
        ok, reason = gpu_available()
        if ok:
            return gpu_backend()
        log.info("device auto: CPU twin (%s)", reason.split(",")[0])
        return cpu_backend()
    raise UserError(f"unknown --device {device!r}: choose auto, cpu or gpu")


# ----------------------------------------------------------------------------------------------------------------
# The twin records: one per algorithm, registered by its stage (gpuclust/cluster/algorithms/, gpuclust/reduce/twins.py).


def _same(params: dict, twin: str) -> dict:
    return dict(params)


def _no_check(params: dict) -> None:
    return None


@dataclass(frozen=True)
class Algorithm:
    """One algorithm, owning both twins. Dotted class paths resolve lazily.

    Users speak the CPU twin's parameter names (scikit-learn's, umap-learn's); `gpu_params` lists those the GPU twin
    honours (None only where both twins are one class), `gpu_only` the GPU class's own tuning settings (dropped on the
    CPU twin), and `translate` turns the user's parameters into what each twin's class takes (tests check the result
    against cuML's signatures). A clusterer also says how it takes k (`k_param`, None when it finds k itself; `finds_k`
    for values that make it find k), whether it is seeded, how its values are checked (the same for both twins), the
    GPU limits that depend on the data (`size_gap`) and what its input needs first (`prepare`)."""

    name: str
    cpu: str
    gpu: str | None
    translate: Callable[[dict, str], dict] = _same
    gpu_params: frozenset[str] | None = None
    gpu_check: Callable[[dict], str | None] | None = None  # what in these values the GPU twin cannot do
    notes: str = ""
    cpu_install: str = "pip install gpuclust"
    gpu_only: frozenset[str] = frozenset()  # the GPU class's own tuning settings: honoured there, dropped on the CPU
    stage: str = "cluster"  # the registry it belongs to: "cluster" or "reduce"
    help: str = ""  # one line for --list
    k_param: str | None = None  # the keyword taking the number of clusters (None: the algorithm finds k)
    finds_k: Callable[[dict], dict | None] | None = None  # values that make it find k -> the k keywords to pass then
    seeded: bool = False  # takes random_state
    check: Callable[[dict], None] = _no_check  # the user's values, checked before any work (raises UserError)
    size_gap: Callable[[dict, int, Backend], str | None] | None = None  # a GPU limit that depends on the rows
    prepare: Callable[[Backend, Any, dict], tuple[Any, dict]] | None = None  # (input, params) just before fitting
    on_warnings: Callable[[list, dict], None] | None = None  # the fit's warnings, when the record handles them

    def gpu_gap(self, params: dict) -> str | None:
        """None when the GPU twin can run `params`, else what it lacks."""
        if self.gpu is None:
            return "a GPU implementation"
        extra = sorted(set(params) - self.gpu_params - self.gpu_only) if self.gpu_params is not None else []
        if extra:
            return "parameter(s) " + ", ".join(extra)
        return self.gpu_check(params) if self.gpu_check else None

    def needs_k(self, params: dict | None = None) -> bool:
        """Whether these values leave the number of clusters to the caller."""
        return self.k_param is not None and not (self.finds_k and self.finds_k(params or {}) is not None)


# Every record by name; each stage's registry (cluster.CLUSTERERS, reduce.TWINS) holds its own, filled on import.
ALGORITHMS: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    """Add a record to the table (a stage's registry calls this). Registering a name again replaces its record, with
    a warning (a notebook cell run twice)."""
    if algo.name in ALGORITHMS and ALGORITHMS[algo.name] != algo:
        log.warning("%s: registered again; the new record replaces the old one", algo.name)
    ALGORITHMS[algo.name] = algo
    _user_keywords.cache_clear()
    return algo


def _resolve(path: str, algo: Algorithm, twin: str):
    module, _, attr = path.rpartition(".")
    install = GPU_INSTALL if twin == "gpu" else algo.cpu_install
    mod = require(module, f"{algo.name} ({twin})", install)
    return getattr(mod, attr)


@dataclass
class Built:
    """An estimator and the twin that will run it."""

    obj: Any
    twin: str
    params: dict = field(default_factory=dict)

    def call(self, method: str, backend: Backend, X, *args, **kwargs):
        """`obj.method(X, ...)`. When the CPU twin stands in on a GPU run, X goes to the host for this step only and
        array results come back to the device."""
        fn = getattr(self.obj, method)
        try:
            if self.twin == backend.name:
                return fn(X, *args, **kwargs)
            host_args = [backend.to_host(a) for a in args]
            out = fn(backend.to_host(X), *host_args, **kwargs)
        except Exception as exc:
            if _is_parameter_error(exc):
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(f"{type(self.obj).__name__}: {msg}") from None
            raise
        return backend.xp.asarray(out) if isinstance(out, np.ndarray) else out


def _is_parameter_error(exc: Exception) -> bool:
    """scikit-learn's validation of a user-supplied parameter value (type or range)."""
    try:
        from sklearn.utils._param_validation import InvalidParameterError
    except ImportError:  # pragma: no cover - older scikit-learn
        return False
    return isinstance(exc, InvalidParameterError)


def device_free_bytes() -> int:
    """Free memory on the current GPU, as the driver counts it, after CuPy's default pool has handed back its cached
    blocks (RMM, which cuML allocates through, cannot use them)."""
    import sys

    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
    if "torch" in sys.modules:  # blocks torch's caching allocator still holds count as used otherwise
        sys.modules["torch"].cuda.empty_cache()
    return int(cupy.cuda.runtime.memGetInfo()[0])


def planned_twin(name: str, backend: Backend, params: dict, warn: bool = False, gap: str | None = None) -> str:
    """The twin that `make_estimator` will build for these parameters: the backend's own, or the CPU twin standing
    in for a GPU twin that lacks the algorithm or one of the parameters (or `gap`, a limit the caller found)."""
    if not backend.is_gpu:
        return "cpu"
    gap = gap or ALGORITHMS[name].gpu_gap(params)  # gap checks apply sklearn's defaults themselves
    if gap and warn:
        log.warning("%s: the GPU twin lacks %s; this step runs on the CPU twin", name, gap)
    return "cpu" if gap else "gpu"


def accepted_keywords(cls) -> frozenset[str] | None:
    """The keyword arguments `cls(...)` takes, from its signature; None when it takes any (**kwargs)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


@functools.lru_cache(maxsize=None)
def _user_keywords(name: str) -> tuple[str, frozenset[str] | None]:
    """(CPU class name, the keywords a user may give `name`): its CPU class's (the convention users speak on both
    twins) and the GPU class's own tuning settings; None when the class takes any."""
    algo = ALGORITHMS[name]
    cls = _resolve(algo.cpu, algo, "cpu")
    accepted = accepted_keywords(cls)
    return cls.__name__, None if accepted is None else accepted | algo.gpu_only


def check_keywords(name: str, params: dict) -> None:
    """A user's keywords against what `name` takes: one line naming the ones it lacks and the ones it takes."""
    cls_name, accepted = _user_keywords(name)
    unknown = sorted(set(params) - accepted) if accepted is not None else []
    if unknown:
        raise UserError(f"{name}: {cls_name} has no parameter {', '.join(unknown)}; it takes "
                        f"{', '.join(sorted(accepted))}")


def make_estimator(name: str, backend: Backend, *, gpu_gap: str | None = None, **params) -> Built:
    """Build `name` for `backend` from the twin table, translating parameters in one place.

    If the GPU twin lacks the algorithm or one of the requested parameters (or the caller names a `gpu_gap` that
    depends on the data, such as its size), the CPU twin is built instead and `twin` says so; the caller moves data
    to the host for that step only. Keywords are checked against the classes' signatures first; an exception while
    building is then a fault of ours, not the user's, and is left to propagate.
    """
    algo = ALGORITHMS[name]
    check_keywords(name, params)
    twin = planned_twin(name, backend, params, warn=True, gap=gpu_gap)
    dropped = sorted(set(params) & algo.gpu_only) if twin == "cpu" else []
    if dropped:  # a configuration written for the GPU still runs here: these tune cuML, not the model
        log.info("%s: %s apply to cuML only; the CPU twin runs without them", name, ", ".join(dropped))
        params = {k: v for k, v in params.items() if k not in algo.gpu_only}
    p = algo.translate(params, twin)
    path = algo.gpu if twin == "gpu" else algo.cpu
    target = _resolve(path, algo, twin)
    if path.startswith("cuml."):
        p.setdefault("output_type", "cupy")
    return Built(target(**p), twin, p)


# The stages' records register themselves when their packages load; loading them here makes the table whole for
# every caller of this module (the stage packages import this module first, and find what they need defined above).
from .cluster import algorithms as _cluster_algorithms  # noqa: E402,F401
from .reduce import twins as _reduce_twins  # noqa: E402,F401
