"""Data sources on real images: packaged sets, folders, and images that cannot be decoded."""
import gzip

import numpy as np
import pytest
from PIL import Image

from gpuclust.data import load_dataset
from gpuclust.data.packaged import read_idx
from gpuclust.errors import UserError
from helpers import write_digit_images


def test_fashion_mnist_splits():
    test = load_dataset("fashion-mnist")
    assert len(test) == 10_000 and test.n_classes == 10 and test.spec == "fashion-mnist:test"
    assert np.bincount(test.labels).tolist() == [1000] * 10
    img = test.load(0)
    assert img.mode == "RGB" and img.size == (28, 28)
    assert len(load_dataset("fashion-mnist:train")) == 60_000


def test_limit_keeps_first_rows_and_changes_fingerprint():
    full, part = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", limit=100)
    assert len(part) == 100
    np.testing.assert_array_equal(part.labels, full.labels[:100])
    assert part.fingerprint() != full.fingerprint()


@pytest.mark.parametrize("spec,n", [("mnist5k", 5000), ("digits", 1797)])
def test_packaged_offline_sets(spec, n):
    ds = load_dataset(spec)
    assert len(ds) == n and ds.n_classes == 10
    assert np.asarray(ds.load(3)).max() > 100  # real, scaled to 0..255


def test_idx_reader_rejects_truncated_file(tmp_path):
    good = tmp_path / "x-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big")
    with gzip.open(good, "wb") as f:
        f.write(header + bytes(range(8)))
    assert read_idx(good).shape == (2, 2, 2)
    bad = tmp_path / "y-idx3-ubyte"
    bad.write_bytes(header + bytes(5))
    with pytest.raises(UserError, match="truncated"):
        read_idx(bad)


def test_missing_fashion_mnist_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_imagefolder_labels_from_subfolders(tmp_path):
    truth = write_digit_images(tmp_path, n_per_class=4, classes=(3, 8))
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classes == ["class_3", "class_8"] and len(ds) == 8
    np.testing.assert_array_equal(ds.labels, (truth == 8).astype(int))
    assert ds.load(0).mode == "RGB"


def test_folder_is_unlabelled(tmp_path):
    write_digit_images(tmp_path, n_per_class=3, classes=(1, 2))
    ds = load_dataset(f"folder:{tmp_path}")
    assert len(ds) == 6 and ds.labels is None


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_odd_pixel_formats_become_rgb(tmp_path, mode):
    (tmp_path / "a").mkdir()
    Image.new(mode, (10, 12)).save(tmp_path / "a" / "img.png")
    img = load_dataset(f"imagefolder:{tmp_path}").load(0)
    assert img.mode == "RGB" and img.size == (10, 12)


def test_empty_folders_are_user_errors(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(UserError, match="no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(UserError, match="not a folder"):
        (tmp_path / "f.txt").write_text("x")
        load_dataset(f"folder:{tmp_path / 'f.txt'}")


def test_imagefolder_run_names_each_row_by_its_folder(tmp_path):
    """labels.parquet maps the renumbered labels back: class_true is the row's own folder name."""
    import pandas as pd

    from helpers import run_cli

    write_digit_images(tmp_path / "img", n_per_class=15, classes=(3, 8, 9))
    out = tmp_path / "run"
    r = run_cli("-q", "--dataset", f"imagefolder:{tmp_path / 'img'}", "--encoder", "pixels", "--reduce", "pca",
                "--dims", "5", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--no-silhouette-umap",
                "--output", str(out))
    assert r.returncode == 0, r.stderr
    t = pd.read_parquet(out / "labels.parquet")
    assert len(t) == 45 and list(t["label_true"].unique()) == [0, 1, 2]
    assert list(t["class_true"]) == [p.split("/")[-2] for p in t["path"]]
    assert sorted(t["class_true"].unique()) == ["class_3", "class_8", "class_9"]
