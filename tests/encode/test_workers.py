"""--num-workers auto (the default): DataLoader workers where images are decoded from files and there are enough of
them, none for images held in memory; the embeddings are the main process's to the bit, and config.json records the
number a run used."""
import json
import logging

import numpy as np
import pytest

import gpuclust as gc
from gpuclust.data import load_dataset
from gpuclust.encode import workers
from gpuclust.encode.workers import resolve_workers
from gpuclust.run import main
from helpers import write_digit_images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers") / "imgs"
    write_digit_images(root, n_per_class=20, classes=(0, 1, 7))  # 60 real images
    return root


@pytest.fixture
def small_threshold(monkeypatch):
    """auto's threshold lowered below the test's 60 images, on 2 cores wherever the test runs."""
    monkeypatch.setattr(workers, "AUTO_MIN_ROWS", 50)
    monkeypatch.setattr(workers, "cores", lambda: 2)


@pytest.mark.parametrize("encoder", ["pixels", "efficientnet_lite0"])
def test_auto_workers_on_image_files_equal_the_main_process_to_the_bit(folder, encoder, small_threshold, tmp_path,
                                                                       caplog):
    spec = f"imagefolder:{folder}"
    kw = dict(runtime="torch", batch_size=16, progress=False, return_rows=True)
    with caplog.at_level(logging.INFO, logger="gpuclust"):
        X_auto, rows_auto = gc.embed(spec, encoder, cache_dir=str(tmp_path / "a"), **kw)  # auto: the default
    assert "encode: 2 DataLoader worker(s) (--num-workers auto: 2 cores" in caplog.text
    X_main, rows_main = gc.embed(spec, encoder, cache_dir=str(tmp_path / "b"), num_workers=0, **kw)
    assert X_auto.shape == (60, X_auto.shape[1]) and rows_auto.tolist() == rows_main.tolist()
    assert np.array_equal(X_auto, X_main)


def test_config_json_keeps_auto_and_records_the_workers_used(folder, small_threshold, tmp_path):
    base = ["--encoder", "pixels", "--reduce", "none", "--k", "3", "--no-silhouette-umap", "--map", "none",
            "--gallery", "0", "-q", "--cache-dir", str(tmp_path / "cache")]
    assert main(["--dataset", f"imagefolder:{folder}", *base, "--output", str(tmp_path / "files")]) == 0
    cfg = json.loads((tmp_path / "files" / "config.json").read_text())
    assert cfg["encode"]["num_workers"] == "auto" and cfg["resolved"]["num_workers"] == 2
    # Images held in memory (the packaged arrays) cost little to load: no workers, however many rows.
    assert main(["--dataset", "digits", "--limit", "100", *base, "--output", str(tmp_path / "digits")]) == 0
    cfg = json.loads((tmp_path / "digits" / "config.json").read_text())
    assert cfg["encode"]["num_workers"] == "auto" and cfg["resolved"]["num_workers"] == 0
    # An integer is used as given, and recorded as such.
    assert main(["--dataset", "digits", "--limit", "100", *base, "--num-workers", "1", "--cache-dir",
                 str(tmp_path / "other"), "--output", str(tmp_path / "one")]) == 0
    cfg = json.loads((tmp_path / "one" / "config.json").read_text())
    assert cfg["encode"]["num_workers"] == 1 and cfg["resolved"]["num_workers"] == 1


class _Files:
    """A dataset whose rows are files (read_bytes), as folders, lists and shards are."""

    def decodes_files(self):
        return True


def test_the_rule(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    digits = load_dataset("digits")
    assert not digits.decodes_files()
    assert resolve_workers("auto", digits, 1797)[0] == 0  # held in memory
    files = _Files()
    monkeypatch.setattr(workers, "cores", lambda: 8)
    assert resolve_workers("auto", files, 5000) == (4, "8 cores, at most 4 on the CPU twin")
    assert resolve_workers("auto", files, 5000, is_gpu=True)[0] == 8
    assert resolve_workers("auto", files, workers.AUTO_MIN_ROWS - 1)[0] == 0  # start-up would not pay
    assert resolve_workers("auto", files, 0)[0] == 0  # everything stored already
    assert resolve_workers("auto", files, 5000, decode="device")[0] == 0  # that loader reads bytes only
    assert resolve_workers(3, digits, 10) == (3, "as asked") and resolve_workers(0, files, 5000)[0] == 0
    monkeypatch.setattr(workers, "cores", lambda: 64)
    assert resolve_workers("auto", files, 5000, is_gpu=True)[0] == 16
    monkeypatch.setattr(workers, "cores", lambda: 1)
    assert resolve_workers("auto", files, 5000)[0] == 0  # a worker would take the encoder's one core


def test_a_sweep_runs_share_of_the_cores_bounds_the_workers(monkeypatch):
    """`--jobs N` gives each run OMP_NUM_THREADS = its share of the cores (sweep/fanout.py); auto keeps within it."""
    files = _Files()
    monkeypatch.setattr(workers, "cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_workers("auto", files, 5000) == (2, "OMP_NUM_THREADS=2 for this process, at most 4 on the CPU twin")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_workers("auto", files, 5000)[0] == 0
    for unset in ("16", "", "four"):  # above the cores, empty or not a number: the cores decide
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert resolve_workers("auto", files, 5000) == (4, "8 cores, at most 4 on the CPU twin")


def test_file_datasets_decode_files(folder, tmp_path):
    from gpuclust.data.tvdatasets import TorchvisionDataset

    assert load_dataset(f"imagefolder:{folder}").decodes_files()
    assert load_dataset(f"folder:{folder}").decodes_files()
    assert not TorchvisionDataset(spec="torchvision:CIFAR10", source=type("S", (), {"data": np.zeros((2, 3))})())\
        .decodes_files()  # CIFAR, MNIST, SVHN: pixels in a `data` array
    assert TorchvisionDataset(spec="torchvision:Food101", source=object()).decodes_files()  # image files
