import subprocess
import sys

HEAVY = ["torch", "cupy", "cuml", "dask", "distributed", "timm", "umap", "cudf"]


def _loaded_after(stmt: str) -> list[str]:
    code = f"import sys; {stmt}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_gpuclust_is_light():
    assert _loaded_after("import gpuclust") == []


def test_cli_module_and_config_are_light():
    # --help and --list must not pay for torch or CUDA
    assert _loaded_after("import gpuclust.run, gpuclust.config, gpuclust.backend") == []


def test_sweep_cli_is_light():
    # the sweep process only plans and records; each run imports what it needs (in a child when fanned out)
    assert _loaded_after("import gpuclust.sweep, gpuclust.sweep.fanout, gpuclust.sweep.table") == []


def test_export_cli_is_light():
    # linking files needs no encoder; only packaged or shard images are read again (PIL)
    assert _loaded_after("import gpuclust.export") == []


def test_lazy_attributes_resolve():
    import gpuclust

    assert gpuclust.RunConfig().reduce.dims == 50
    assert callable(gpuclust.run_pipeline)


def test_openmp_threads_sleep_while_waiting_unless_the_user_chose():
    """`import gpuclust` sets OMP_WAIT_POLICY=PASSIVE where it is unset (spinning OpenMP threads took KMeans from 0.22
    to 9.75 s beside two busy processes on 2 cores: benchmarks/bench_omp_wait.py); a value the user set is kept."""
    import os

    code = "import os, gpuclust; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                            capture_output=True, text=True, check=True)
    assert unset.stdout.strip() == "PASSIVE" and chosen.stdout.strip() == "ACTIVE"
