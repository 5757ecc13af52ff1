"""Where the CPU twin's encoder runs: torch, or the same model exported to ONNX and run by ONNX Runtime.

On this project's 2-core CPU ONNX Runtime's CPU provider encodes 1.7-4.6x faster than torch eager (DESIGN.md,
"Offline facts"). The model is exported once per encoder and weights and cached beside the embedding store
(`<cache>/onnx/<digest>/model.onnx`); before its outputs are used, the first images it sees (16 of the run's own) go
through torch too, and a model whose outputs differ beyond float rounding is not used. A model that does not export,
or does not match, runs on torch with a log line. ONNX Runtime's outputs equal torch's to float rounding (about 1e-5
relative), so the embedding store does not record the runtime: stores are shared between the two.
The GPU twin stays on torch (bf16 autocast, torch.compile, DLPack to CuPy).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

from ..errors import UserError, exception_line

log = logging.getLogger(__name__)

ORT_INSTALL = "pip install onnxruntime onnx"
RUNTIMES = ("auto", "torch", "onnx")
EXPORT_FORMAT = 1  # part of the cached model's key: a change to how models are exported makes new files
# How far ONNX Runtime's outputs may lie from torch's on the check batch: float rounding, not a different model.
MAX_REL_ERROR = 1e-3  # largest |ort - torch| over the largest |torch| of the batch
MIN_COSINE = 0.99999  # smallest cosine similarity of a row with its torch twin
CHECK_ROWS = 16  # images of the first batch that torch encodes too (all 128 would cost 7 s of EfficientNet-Lite0 here)
# Rows per concurrent run when a batch is split among threads (Runner, parallel="rows"): 16-64 ran at the same speed
# per thread here; 32 gives each of 2 threads two runs of a 128-image batch.
SPLIT_ROWS = 32
PARALLEL = ("rows", "intra")


def has_onnxruntime() -> bool:
    """Whether both onnxruntime and onnx are installed (found, not imported)."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_runtime(runtime: str, device_type: str, precision: str = "fp32", compile: bool = False) -> str:
    """"torch" or "onnx" for this run. `auto` takes ONNX Runtime on the CPU twin in fp32 when it is installed."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return "torch"
    why = ("the GPU twin encodes with torch" if device_type != "cpu" else
           f"--precision {precision} is torch's autocast" if precision != "fp32" else
           "--compile is torch's" if compile else None)
    if why:
        if runtime == "onnx":
            log.warning("--runtime onnx: %s; encoding with torch", why)
        return "torch"
    if not has_onnxruntime():
        if runtime == "onnx":
            raise UserError(f"--runtime onnx needs ONNX Runtime, which is not installed: {ORT_INSTALL}")
        return "torch"
    return "onnx"


def model_dir(cache_root: Path, key: dict, input_shape: tuple) -> Path:
    """The folder of one exported model: encoder, weights and input size (what changes the graph)."""
    ident = {"encoder": key.get("encoder"), "weights": key.get("weights"), "input": list(input_shape),
             "format": EXPORT_FORMAT}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_root).expanduser() / "onnx" / digest


def _threads() -> int:
    """torch's thread count: the budget a Dask worker or a fanned-out sweep run set for this process."""
    import torch

    return max(1, torch.get_num_threads())


class OrtEncoder:
    """A torch encoder's forward pass run by ONNX Runtime, behind the same call: a float tensor batch in, a float
    tensor of features out. Falls back to the torch model for good when export or the check fails."""

    def __init__(self, torch_model, key: dict, cache_root: Path):
        self.torch_model, self.key, self.cache_root = torch_model, key, Path(cache_root)
        self.session = None  # a Runner once opened
        self.failed = False
        self.folder = None
        self._lock = threading.Lock()

    def __call__(self, x):
        if self.failed:
            return self.torch_model(x)
        if self.session is None:
            with self._lock:
                if self.session is None and not self.failed:
                    return self._first(x)
            return self(x)
        try:
            return self._run(x)
        except Exception as exc:  # onnxruntime's own error types (Fail, InvalidArgument, ...) for a graph gone wrong
            return self._broken(x, exc)

    def _broken(self, x, exc):
        """A checked model that fails on a later batch: torch from here on, and the next run exports again."""
        self.session = None
        for name in ("checked.json", "model.onnx"):
            (self.folder / name).unlink(missing_ok=True)
        return self._give_up(x, f"ONNX Runtime failed on a batch of {x.shape[0]} ({exception_line(exc)})")

    def _run(self, x):
        import torch

        return torch.from_numpy(self.session(x.detach().cpu().contiguous().numpy()))

    def _first(self, x):
        """Open (export first if needed) and, unless an earlier run did, check against torch on this batch."""
        import torch

        folder = self.folder = model_dir(self.cache_root, self.key, tuple(x.shape[1:]))
        try:
            if not (folder / "model.onnx").is_file():
                # Two rows, so that tracing cannot take the batch size for a constant.
                example = x[:2] if x.shape[0] > 1 else torch.cat([x[:1], x[:1]])
                with torch.inference_mode(False), torch.no_grad():  # tracing cannot use inference-mode tensors
                    export(self.torch_model, example.clone(), folder / "model.onnx")
            self.session = Runner(folder / "model.onnx")
        except Exception as exc:  # exporters and runtimes raise many types for operators they lack
            (folder / "model.onnx").unlink(missing_ok=True)  # a damaged file is exported again next time
            return self._give_up(x, f"it does not export to ONNX ({exception_line(exc)})")
        if (folder / "checked.json").is_file():
            return self(x)
        # The check batch: up to CHECK_ROWS of the run's images, at least two (a row repeated if need be).
        check = x[:CHECK_ROWS] if x.shape[0] > 1 else torch.cat([x[:1], x[:1]])
        ref = self.torch_model(check)
        try:
            got = self._run(check)
        except Exception as exc:
            return self._broken(x, exc)
        rel, cos = compare(got, ref) if tuple(got.shape) == tuple(ref.shape) else (float("inf"), -1.0)
        if rel > MAX_REL_ERROR or cos < MIN_COSINE:
            self.session = None
            return self._give_up(x, f"its outputs differ from torch's (relative error {rel:.1e}, cosine {cos:.6f})")
        from ..store import atomic_write_json

        rows = int(check.shape[0])
        try:
            atomic_write_json(folder / "checked.json", {"rows": rows, "max_rel_error": rel, "min_cosine": cos})
        except OSError as exc:  # (checked again next run)
            log.warning("encode: cannot record the ONNX check in %s (%s)", folder, exc.strerror or exc)
        log.info("encode: ONNX Runtime checked against torch on %d images (relative error %.1e, cosine %.7f)",
                 rows, rel, cos)
        return self(x)

    def _give_up(self, x, why: str):
        self.failed = True
        log.warning("encode: %s runs on torch: %s", self.key.get("encoder"), why)
        return self.torch_model(x)


def compare(out, ref) -> tuple[float, float]:
    """(largest absolute difference over the largest magnitude, smallest row cosine) of two feature batches."""
    import torch

    out, ref = out.double(), ref.double()
    rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    cos = float(torch.nn.functional.cosine_similarity(out, ref, dim=1, eps=1e-30).min())
    return rel, cos


def export(model, example, path: Path) -> None:
    """`model` to ONNX at `path` (atomically), the batch dimension dynamic."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed export's (files older than an hour)
        try:
            if stale.stat().st_mtime < time.time() - 3600:
                stale.unlink()
        except OSError:
            continue
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export's, which needs onnxscript; it exports
            # these CNNs and ViTs offline with no further package.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (example.contiguous(),), str(tmp), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("encode: exported the encoder to %s", path)


class Runner:
    """An ONNX Runtime session that runs a batch on `threads` cores (default: torch's thread budget, `_threads`).

    parallel="rows" (the pipeline's): the batch is split into chunks of about SPLIT_ROWS rows that `threads` Python
    threads run at once on one single-threaded session (ONNX Runtime's `run` is thread-safe and releases the GIL).
    parallel="intra": one `run` over the whole batch with `threads` intra-op threads, ONNX Runtime's own way.
    On the 2-core machine rows gave EfficientNet-Lite0 113-127 images/s from tensors against 101-117 for intra (one
    thread alone: 62-67), and the whole extraction of 2,000 Fashion-MNIST images 100-102 against 92: each thread runs
    whole operators with no barrier between the two after each one (benchmarks/bench_extract.py --ort-parallel).
    Decoding the next batch in a thread meanwhile gained nothing there (the two cores are already busy), so it is not
    done. A single row runs on one thread either way."""

    def __init__(self, path: Path, threads: int | None = None, opt: str = "all", parallel: str = "rows"):
        if parallel not in PARALLEL:
            raise ValueError(f"parallel={parallel!r}: one of {PARALLEL}")
        self.threads = threads or _threads()
        self.parallel = parallel if self.threads > 1 else "intra"
        self.session = open_session(path, 1 if self.parallel == "rows" else self.threads, opt)
        self._pool = None
        self._lock = threading.Lock()

    def __call__(self, a):
        import numpy as np

        n = a.shape[0]
        if self.parallel == "intra" or n < 2:
            return self.session.run(None, {"x": a})[0]
        bounds = np.linspace(0, n, min(n, max(self.threads, -(-n // SPLIT_ROWS))) + 1).astype(int)
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gpuclust-ort")
        outs = self._pool.map(lambda lo, hi: self.session.run(None, {"x": a[lo:hi]})[0], bounds[:-1], bounds[1:])
        return np.concatenate(list(outs))


OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def open_session(path: Path, threads: int | None = None, opt: str = "all"):
    """An ONNX Runtime CPU session: every graph optimisation and one intra-op thread per core of this process unless
    told otherwise (benchmarks/bench_extract.py measures both)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or _threads()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt])
    # Idle pool threads sleep instead of spinning: the same speed alone (102 images/s for EfficientNet-Lite0 either
    # way here), and no cores burnt beside DataLoader workers, test workers or other runs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
