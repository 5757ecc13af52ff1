"""Running a sweep's runs: one at a time in this process, or fanned out.

With --jobs/--gpus/--scheduler-address several grid points run at once, each in its own Python process (a child of
this one, or of a Dask worker): a run's device memory, threads and any crash stay its own, and a GPU is pinned by
CUDA_VISIBLE_DEVICES before the child imports CUDA. The child runs `_attempt` exactly as the sequential sweep does
and reports through its exit code (0 ok, 2 error, 1 internal error) and error.txt.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from ..errors import UserError
from .grid import Run, _normal
from .options import SweepOptions

log = logging.getLogger("gpuclust.sweep")


EXIT_STATUS = {0: "ok", 2: "error", 1: "internal_error"}


CHILD_CODE = "import sys; from gpuclust.sweep.fanout import child_main; sys.exit(child_main(sys.argv[1:]))"


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _attempt(cfg) -> tuple[str, str, str]:
    """(status, error, detail) of one run of `cfg`; its failure is returned, never raised."""
    from .. import pipeline

    try:
        pipeline.run_pipeline(cfg, progress=False)
        return "ok", "", ""
    except UserError as exc:
        return "error", _one_line(exc), str(exc)
    except Exception as exc:  # a bug or a broken environment: recorded, the sweep goes on, exit 1 at the end
        return "internal_error", f"{type(exc).__name__}: {_one_line(exc)}", traceback.format_exc()


def _write_error(run_dir: Path, detail: str) -> None:
    from ..store import atomic_write_bytes

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "error.txt", (detail.rstrip("\n") + "\n").encode())


def execute(run: Run, out: Path) -> tuple[str, str]:
    """Run one grid point in this process: (status, error). One bad point costs one row."""
    run_dir = out / run.dir
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed attempt's files must not mix with this one's
    status, error, detail = _attempt(dataclasses.replace(run.cfg, output=str(run_dir)))
    if status != "ok":
        if status == "internal_error":
            log.error("run %s: %s", run.id, error)
        _write_error(run_dir, detail)
    return status, error


def child_main(argv: list[str]) -> int:
    """Entry point of a fanned-out run: argv = [run config as JSON, run directory]."""
    from ..config import RunConfig, merge

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("gpuclust").setLevel(logging.INFO)  # the run's stage log, kept in its log.txt
    config, run_dir = json.loads(argv[0]), Path(argv[1])
    cfg = dataclasses.replace(merge(RunConfig(), config, where="sweep run"), output=str(run_dir))
    status, error, detail = _attempt(cfg)
    if status != "ok":
        _write_error(run_dir, detail)
        print(f"gpuclust.sweep run: {status}: {error}", file=sys.stderr)
    return {v: k for k, v in EXIT_STATUS.items()}[status]


def _die_with_parent() -> None:
    """In a child between fork and exec: end when the sweep process ends, even by SIGKILL (Linux)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child_command(run: Run, run_dir: Path) -> list[str]:
    config = {k: v for k, v in _normal(run.cfg.to_dict()).items() if k != "output"}
    return [sys.executable, "-c", CHILD_CODE, json.dumps(config), str(run_dir)]


def _package_path_env(env: dict) -> dict:
    """The child imports this same gpuclust, wherever the parent found it."""
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


def _spawn(cmd: list[str], run_dir: Path, env: dict):
    import subprocess

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "wb") as log_file:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def _dask_run(cmd: list[str], run_dir: str) -> int:
    """A Dask task: one grid point in a child of the worker (which holds the worker's GPU in its environment). The
    worker's own Python runs it: on another machine the client's interpreter path may not exist."""
    proc = _spawn([sys.executable, *cmd[1:]], Path(run_dir), _package_path_env(dict(os.environ)))
    return proc.wait()


def _outcome(run_dir: Path, code: int) -> tuple[str, str]:
    """(status, error) of a finished child from its exit code and error.txt."""
    status = EXIT_STATUS.get(code, "internal_error")
    if status == "ok":
        return status, ""
    err = run_dir / "error.txt"
    if status != "internal_error" or code == 1:
        if err.is_file():
            text = err.read_text(errors="replace").strip()
            return status, text.splitlines()[0] if status == "error" else _last_line(text)
    import signal

    why = (f"the run's process was killed by {signal.Signals(-code).name}" if code < 0
           else f"the run's process exited with code {code}")
    log_file = run_dir / "log.txt"
    tail = log_file.read_text(errors="replace")[-4000:] if log_file.is_file() else ""
    _write_error(run_dir, f"{why}\n\nlast lines of log.txt:\n{tail}")
    return "internal_error", why + (" (out of memory?)" if code == -9 else "")


def _last_line(text: str) -> str:
    """An internal error's summary: the traceback's last line (`Type: message`)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "internal error"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (without importing torch or CuPy when the
    variable says it)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import cupy

        return [str(i) for i in range(cupy.cuda.runtime.getDeviceCount())]
    except Exception:  # no CuPy, or no driver
        pass
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


class InProcess:
    """One run at a time in this process (the default)."""

    capacity = 1
    where = "this process"

    def __init__(self):
        self._done: list = []

    def start(self, run: Run, out: Path) -> None:
        """Run `run` now, in this process; the next wait() reports it."""
        self._done.append((run, execute(run, out)))

    def wait(self) -> list:
        """Block until a run finishes: [(run, (status, error))]."""
        done, self._done = self._done, []
        return done

    def stop(self) -> None:
        """End whatever still runs (the sweep is over or interrupted)."""
        pass


class LocalProcesses:
    """N runs at once, each a child process; with GPUs, child i % len(gpus) sees only its GPU."""

    def __init__(self, jobs: int, gpus: list[str]):
        self.capacity = jobs
        self.gpus = gpus
        self._procs: dict = {}  # run id -> (run, run_dir, Popen)
        self._slot_of: dict = {}
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self._threads = str(threads)
        self.where = (f"{jobs} processes on GPU(s) {','.join(gpus)}" if gpus
                      else f"{jobs} processes, {threads} thread(s) each")

    def start(self, run: Run, out: Path) -> None:
        """Begin running `run` into its directory under `out`."""
        run_dir = out / run.dir
        shutil.rmtree(run_dir, ignore_errors=True)
        env = _package_path_env(dict(os.environ))
        for var in THREAD_VARS:  # N runs share the cores (a user's own setting wins)
            env.setdefault(var, self._threads)
        if self.gpus:
            slot = min(set(range(self.capacity)) - set(self._slot_of.values()))
            self._slot_of[run.id] = slot
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        self._procs[run.id] = (run, run_dir, _spawn(_child_command(run, run_dir), run_dir, env))

    def wait(self) -> list:
        """Block until a run finishes: [(run, (status, error))]."""
        while True:
            done = [(rid, code) for rid, (_, _, p) in self._procs.items() if (code := p.poll()) is not None]
            if done:
                break
            time.sleep(0.2)
        out = []
        for rid, code in done:
            run, run_dir, _ = self._procs.pop(rid)
            self._slot_of.pop(rid, None)
            out.append((run, _outcome(run_dir, code)))
        return out

    def stop(self) -> None:
        """End whatever still runs (the sweep is over or interrupted)."""
        for _, _, p in self._procs.values():
            p.kill()
        for _, _, p in self._procs.values():
            p.wait()


class DaskWorkers:
    """Runs on an existing Dask cluster: one at a time per worker thread, each in a child of its worker (dask-cuda
    workers hold one GPU each). The sweep directory must be on a filesystem every worker sees."""

    def __init__(self, address: str):
        from ..distributed import connect

        self.client = connect(address)
        self.capacity = max(1, sum(self.client.nthreads().values()))
        self.where = f"{self.capacity} Dask worker thread(s) at {address}"
        self._futures: dict = {}

    def start(self, run: Run, out: Path) -> None:
        """Begin running `run` into its directory under `out`."""
        run_dir = (out / run.dir).resolve()
        shutil.rmtree(run_dir, ignore_errors=True)
        fut = self.client.submit(_dask_run, _child_command(run, run_dir), str(run_dir), pure=False,
                                 key=f"gpuclust-sweep-{run.id}-{time.time_ns()}")
        self._futures[fut] = (run, run_dir)

    def wait(self) -> list:
        """Block until a run finishes: [(run, (status, error))]."""
        from distributed import wait

        done, _ = wait(list(self._futures), return_when="FIRST_COMPLETED")
        out = []
        for fut in done:
            run, run_dir = self._futures.pop(fut)
            try:
                code = fut.result()
            except Exception as exc:  # the worker died or the task could not run there
                _write_error(run_dir, f"the Dask task failed: {type(exc).__name__}: {exc}")
                out.append((run, ("internal_error", f"Dask task failed: {type(exc).__name__}: {_one_line(exc)}")))
                continue
            out.append((run, _outcome(run_dir, code)))
        return out

    def stop(self) -> None:
        """End whatever still runs (the sweep is over or interrupted)."""
        self.client.cancel(list(self._futures))
        self.client.close()


def check_fan_out(options: SweepOptions, runs: list[Run], count_gpus: bool = True) -> list[str]:
    """The fan-out flags checked against the grid and (with `count_gpus`) this machine's GPUs before anything is
    written; returns the GPUs (CUDA_VISIBLE_DEVICES entries) that --gpus takes."""
    if options.fanned_out:
        for run in runs:
            c = run.cfg
            if c.gpus > 1 or c.workers or c.scheduler_address:
                raise UserError("a fanned-out sweep (--jobs/--gpus/--scheduler-address) runs each run on one GPU or "
                                "CPU process; remove gpus/workers/scheduler_address from the sweep's base settings")
    if options.scheduler_address and (options.jobs is not None or options.gpus is not None):
        raise UserError("--scheduler-address runs one run per Dask worker thread; drop --jobs/--gpus")
    gpus: list[str] = []
    if options.gpus is not None:
        if options.gpus < 1:
            raise UserError(f"--gpus {options.gpus}: at least 1")
        visible = visible_gpus() if count_gpus else [str(i) for i in range(options.gpus)]
        if len(visible) < options.gpus:
            raise UserError(f"--gpus {options.gpus}: {len(visible)} GPU(s) visible (check nvidia-smi and "
                            "CUDA_VISIBLE_DEVICES)")
        gpus = visible[:options.gpus]
    if options.jobs is not None and options.jobs < 1:
        raise UserError(f"--jobs {options.jobs}: at least 1")
    return gpus


def open_slots(options: SweepOptions, gpus: list[str]):
    """Where the runs go: this process (default), N local processes (--jobs N, --gpus N), or a Dask cluster."""
    if options.scheduler_address:
        return DaskWorkers(options.scheduler_address)
    if options.jobs is None and options.gpus is None:
        return InProcess()
    return LocalProcesses(options.jobs or len(gpus) or 1, gpus)


def _share_keys(run: Run) -> tuple[str, str, str]:
    """What a run shares with others through the store: its embeddings, their (seeded) UMAP space, its reduction.
    The seed picks the rows only for a stratified --limit draw; otherwise runs of every seed share the embeddings."""
    def pick(prefixes, seeded):
        return json.dumps({k: v for k, v in run.flat.items()
                           if k.startswith(prefixes) or k == "device" or (k == "seed" and seeded)},
                          sort_keys=True, default=str)

    data = run.cfg.data
    drawn = data.subsample == "stratified" and data.limit is not None
    return (pick(("data.", "encode."), drawn), pick(("data.", "encode."), True),
            pick(("data.", "encode.", "reduce."), True))


def next_ready(pending: list[Run], running: list[Run], shared: set[str]) -> Run | None:
    """The first pending run that would not compute, at the same time as a running one, something they share: the
    first run of a (dataset, encoder) encodes and every later one reuses the store; likewise for a reduction."""
    busy = {k for r in running for k in _share_keys(r) if k not in shared}
    return next((r for r in pending if not busy.intersection(_share_keys(r))), None)
