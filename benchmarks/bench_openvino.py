"""OpenVINO's CPU runtime against ONNX Runtime on gpuclust's exported encoders: images/s of fp32 batches, outputs.

Both runtimes read the same ONNX file, exported the way gpuclust exports it (gpuclust.encode.runtime.export: the
TorchScript exporter, opset 17, the batch dimension dynamic), and encode the same real inputs: Fashion-MNIST test
images through the encoder's own transform. ONNX Runtime runs with gpuclust's session settings (one intra-op thread
per core, every graph optimisation, no spinning); OpenVINO with each performance hint and the same thread count:

  ort             ONNX Runtime as gpuclust runs it
  ov-latency      OpenVINO, PERFORMANCE_HINT=LATENCY, the model reshaped to the batch (static shapes)
  ov-dynamic      the same with the ONNX file's dynamic batch left as it is (what a drop-in runtime would get)
  ov-throughput   PERFORMANCE_HINT=THROUGHPUT: the batch split among the compiled model's optimal number of infer
                  requests (its streams), run together by an AsyncInferQueue

Each row's outputs are compared with ONNX Runtime's (largest absolute difference, smallest row cosine) and with
torch's when the export step saved them. Settings are timed in turn (A B C A B C ...), the median kept.

Two steps, because OpenVINO need not live beside torch:

    python benchmarks/bench_openvino.py --export-only          # gpuclust's venv: ONNX files, inputs, torch outputs
    /tmp/ov-venv/bin/python benchmarks/bench_openvino.py       # any python with openvino, onnxruntime and numpy

(the second step exports first by itself when it runs where torch and gpuclust import).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = ("ort", "ov-latency", "ov-dynamic", "ov-throughput")


def export_models(folder: Path, encoders: list[str], batch: int) -> None:
    """Per encoder: <name>.onnx as gpuclust exports it, <name>-input.npy (the first `batch` Fashion-MNIST test images
    through its transform) and <name>-torch.npy (torch's fp32 outputs on them)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from gpuclust.data.packaged import fashion_mnist
    from gpuclust.encode.registry import create_encoder
    from gpuclust.encode.runtime import export

    ds = fashion_mnist("test")
    folder.mkdir(parents=True, exist_ok=True)
    for name in encoders:
        enc = create_encoder(name)
        model = enc.model.eval()
        x = torch.stack([enc.transform(ds.load(i)) for i in range(batch)])
        with torch.no_grad():
            export(model, x[:2].clone(), folder / f"{name}.onnx")
            ref = model(x).float().numpy()
        np.save(folder / f"{name}-input.npy", x.numpy())
        np.save(folder / f"{name}-torch.npy", ref)
        print(f"exported {name} -> {folder / (name + '.onnx')}", flush=True)


def ort_runner(path: Path, threads: int):
    """gpuclust's ONNX Runtime session (encode.runtime.open_session's settings, written out so that this step does
    not need gpuclust's dependencies)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def ov_config(hint: str, threads: int) -> dict:
    """OpenVINO CPU properties: the hint, the thread budget, fp32 arithmetic (no bf16/fp16 downcast)."""
    return {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}


def ov_runner(path: Path, setting: str, threads: int, batch: int):
    """A callable batch -> outputs for one OpenVINO setting, and a note (streams/requests)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if setting == "ov-throughput":
        return _ov_throughput(core, model, threads, batch)
    if setting == "ov-latency":
        model.reshape({model.inputs[0].any_name: [batch, *list(model.inputs[0].partial_shape)[1:]]})
    compiled = core.compile_model(model, "CPU", ov_config("LATENCY", threads))
    request = compiled.create_infer_request()
    streams = compiled.get_property("NUM_STREAMS")
    return (lambda x: request.infer({0: x})[0].copy()), f"streams={streams}"


def _ov_throughput(core, model, threads: int, batch: int):
    """THROUGHPUT hint: the compiled model's optimal number of requests, each a static slice of the batch."""
    import openvino as ov

    probe = core.compile_model(model.clone(), "CPU", ov_config("THROUGHPUT", threads))
    n_req = max(1, int(probe.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    while batch % n_req:
        n_req -= 1
    part = batch // n_req
    model.reshape({model.inputs[0].any_name: [part, *list(model.inputs[0].partial_shape)[1:]]})
    compiled = core.compile_model(model, "CPU", ov_config("THROUGHPUT", threads))
    queue = ov.AsyncInferQueue(compiled, n_req)
    out: list = [None] * n_req
    queue.set_callback(lambda req, i: out.__setitem__(i, req.get_output_tensor(0).data.copy()))

    def run(x):
        for i in range(n_req):
            queue.start_async({0: x[i * part:(i + 1) * part]}, i)
        queue.wait_all()
        return np.concatenate(out)
    return run, f"streams={compiled.get_property('NUM_STREAMS')} requests={n_req}x{part}"


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(largest absolute difference, smallest row cosine) of two output batches, in float64."""
    a, b = out.astype(np.float64), ref.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return float(np.abs(a - b).max()), float(cos.min())


def time_settings(runners: dict, x: np.ndarray, steps: int, repeats: int) -> dict:
    """Images/s per setting: `steps` batches per measurement, settings interleaved, the median of `repeats`."""
    for run in runners.values():  # warm-up: first-call allocations and kernel selection
        run(x)
    speeds: dict = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t = time.perf_counter()
            for _ in range(steps):
                run(x)
            speeds[name].append(steps * len(x) / (time.perf_counter() - t))
    return {name: statistics.median(v) for name, v in speeds.items()}


def bench_encoder(folder: Path, name: str, args) -> list[dict]:
    """The rows of one encoder: each setting's images/s, its ratio to ONNX Runtime and its outputs' distance."""
    path = folder / f"{name}.onnx"
    x = np.ascontiguousarray(np.load(folder / f"{name}-input.npy")[:args.batch], dtype=np.float32)
    ref_torch = folder / f"{name}-torch.npy"
    torch_out = np.load(ref_torch)[:args.batch] if ref_torch.is_file() else None
    runners, notes = {"ort": ort_runner(path, args.threads)}, {"ort": f"threads={args.threads}"}
    for setting in args.settings:
        if setting != "ort":
            runners[setting], notes[setting] = ov_runner(path, setting, args.threads, len(x))
    outs = {s: run(x) for s, run in runners.items()}
    speed = time_settings(runners, x, args.steps, args.repeats)
    rows = []
    for s in runners:
        diff, cos = compare(outs[s], outs["ort"])
        tdiff, tcos = compare(outs[s], torch_out) if torch_out is not None else (float("nan"), float("nan"))
        rows.append({"encoder": name, "setting": s, "batch": len(x), "threads": args.threads,
                     "img_per_s": speed[s], "vs_ort": speed[s] / speed["ort"], "max_abs_vs_ort": diff,
                     "min_cos_vs_ort": cos, "max_abs_vs_torch": tdiff, "min_cos_vs_torch": tcos, "note": notes[s]})
    return rows


def version(dist: str) -> str:
    """An installed distribution's version, "na" when absent."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "na"


def save(out: Path, rows: list[dict]) -> None:
    """The rows as CSV (written whole, atomically)."""
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)


def print_table(rows: list[dict]) -> None:
    """The rows as a plain-text table."""
    print(f"\n{'encoder':>18} {'setting':>14} {'img/s':>8} {'vs ORT':>7} {'max|d| ORT':>11} {'cos ORT':>10} "
          f"{'max|d| torch':>12} {'cos torch':>10}  note")
    for r in rows:
        print(f"{r['encoder']:>18} {r['setting']:>14} {r['img_per_s']:8.1f} {r['vs_ort']:6.2f}x "
              f"{r['max_abs_vs_ort']:11.2e} {r['min_cos_vs_ort']:10.7f} {r['max_abs_vs_torch']:12.2e} "
              f"{r['min_cos_vs_torch']:10.7f}  {r['note']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "mobilenetv2"])
    p.add_argument("--models", default="/tmp/gpuclust-bench-openvino", help="folder of the exported models")
    p.add_argument("--export-only", action="store_true", help="export models and inputs, time nothing")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both runtimes")
    p.add_argument("--steps", type=int, default=2, help="batches per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved measurements per setting (median kept)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--out", default=None, help="CSV path (default: results/openvino-<machine>-<versions>.csv)")
    args = p.parse_args(argv)
    folder = Path(args.models)
    missing = [e for e in args.encoders if not (folder / f"{e}-input.npy").is_file()]
    if args.export_only or missing:
        export_models(folder, args.encoders if args.export_only else missing, args.batch)
    if args.export_only:
        return 0
    if "ort" not in args.settings:
        args.settings = ["ort", *args.settings]
    rows = []
    for name in args.encoders:
        rows += bench_encoder(folder, name, args)
        print_table(rows[-len(args.settings):])
    tag = f"cpu{os.cpu_count()}-{platform.machine()}-ort{version('onnxruntime')}-openvino{version('openvino')}"
    out = Path(args.out) if args.out else RESULTS / f"openvino-{tag}.csv"
    save(out, rows)
    print_table(rows)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
