"""--num-workers auto: how many DataLoader worker processes decode and transform images beside the encoder.

Workers change no number (each row goes through the same transform in whichever process; `_Collate` keeps the row
order), so the count is not part of the store key; it is recorded in config.json's `resolved.num_workers`."""
from __future__ import annotations

import os

# Below this many images to encode, auto starts no workers. A worker costs a second or two before its first batch
# (a process forked or spawned, torch imported, a batch of images decoded before anything reaches the encoder);
# measured on 2 cores, 2 workers took ONNX Runtime's EfficientNet-Lite0 from 55 to 72 images/s on 320-640 px JPEGs,
# which gains about 4 s per 1,000 images: under that the start-up eats most of the gain.
AUTO_MIN_ROWS = 1000

# The most workers auto starts, one per core of this process up to these. Measured on 2 cores only (0, 1 and 2
# workers: 55.5, 66.1 and 72.3 images/s with ONNX Runtime; 25.4, 27.4, 27.7 with torch), where 2 was best. Beyond
# 2 cores it is unmeasured: on the CPU twin the encoder already takes one thread per core (ONNX Runtime, torch), so
# more decoders than a few only compete with it; on a GPU decoding is the bottleneck and the GPU benchmarks ran 16
# workers on a 16-core machine.
CPU_MAX_WORKERS = 4
GPU_MAX_WORKERS = 16


def cores() -> int:
    """The CPU cores this process may run on (its affinity, which a container or `taskset` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def thread_budget() -> int | None:
    """The threads this process was given, when OMP_NUM_THREADS says (a sweep's --jobs N sets it for each run to its
    share of the cores, as a user may): auto's workers stay within it, so that N runs do not each start one worker
    per core of the machine beside their encoders. None when unset or not a whole number."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n >= 1 else None


def holds_files(dataset) -> bool:
    """Whether the dataset's rows are image files to decode (folders, lists, shards, torchvision's file-backed sets),
    rather than decoded pixels held in memory (the packaged arrays, CIFAR, MNIST), which cost little to load."""
    check = getattr(dataset, "decodes_files", None)
    return bool(check()) if callable(check) else False


def resolve_workers(value: int | str, dataset, n_rows: int, decode: str = "cpu",
                    is_gpu: bool = False) -> tuple[int, str]:
    """(DataLoader workers, why) for `--num-workers value` when `n_rows` images are to be encoded: an integer as
    given; auto as the module's note says."""
    if value != "auto":
        return int(value), "as asked"
    if n_rows <= 0:
        return 0, "nothing to encode"
    if decode == "device":  # that loader reads file bytes and a JPEG header; the device decodes
        return 0, "--decode device reads bytes only"
    if not holds_files(dataset):
        return 0, "images held in memory"
    if n_rows < AUTO_MIN_ROWS:
        return 0, f"{n_rows} images to encode, under {AUTO_MIN_ROWS:,}: workers would not repay their start-up"
    n, budget = cores(), thread_budget()
    what = f"{n} cores"
    if budget is not None and budget < n:
        n, what = budget, f"OMP_NUM_THREADS={budget} for this process"
    if n < 2:
        return 0, f"{what}: a worker would take the encoder's one core"
    cap = GPU_MAX_WORKERS if is_gpu else CPU_MAX_WORKERS
    return min(cap, n), f"{what}, at most {cap} on the {'GPU' if is_gpu else 'CPU'} twin"
