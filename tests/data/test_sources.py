"""Dataset sources beyond the packaged sets: stratified subsamples, torchvision datasets, webdataset tar shards."""
import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpuclust.data import load_dataset, stratified_rows
from gpuclust.data.packaged import FASHION_MNIST_DIR
from gpuclust.data.webdataset import expand_shards
from gpuclust.errors import UserError
from helpers import run_cli


def test_stratified_rows_keep_class_shares_and_follow_the_seed():
    labels = np.repeat([0, 1, 2, 3], [500, 300, 150, 50])
    rows = stratified_rows(labels, len(labels), 100, seed=3)
    assert len(rows) == len(set(rows.tolist())) == 100 and np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows]).tolist() == [50, 30, 15, 5]
    assert np.array_equal(rows, stratified_rows(labels, len(labels), 100, seed=3))
    assert not np.array_equal(rows, stratified_rows(labels, len(labels), 100, seed=4))
    odd = stratified_rows(labels, len(labels), 7, seed=0)  # shares 3.5/2.1/1.05/0.35 -> largest remainders
    assert len(odd) == 7 and np.bincount(labels[odd], minlength=4).tolist() == [4, 2, 1, 0]
    free = stratified_rows(None, 1000, 10, seed=0)
    assert len(set(free.tolist())) == 10 and free.max() < 1000


def test_stratified_limit_on_fashion_mnist_is_balanced():
    first = load_dataset("fashion-mnist", limit=1000)
    strat = load_dataset("fashion-mnist", limit=1000, subsample="stratified", seed=0)
    assert np.bincount(strat.labels).tolist() == [100] * 10  # the test split has 1,000 per class
    assert np.bincount(first.labels).tolist() != [100] * 10
    assert strat.fingerprint() != first.fingerprint()
    assert strat.fingerprint() == load_dataset("fashion-mnist", limit=1000, subsample="stratified").fingerprint()


def test_a_first_n_cut_missing_classes_is_warned(caplog):
    """mnist5k is sorted by digit: its first 500 rows are all zeros, which the user should hear about."""
    with caplog.at_level("WARNING", logger="gpuclust.data"):
        ds = load_dataset("mnist5k", limit=500)
    assert len(np.unique(ds.labels)) == 1
    assert "hold 1 of the 10 classes" in caplog.text and "--subsample stratified" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gpuclust.data"):
        load_dataset("mnist5k", limit=500, subsample="stratified")
        load_dataset("digits", limit=500)  # digits cycles through its classes
    assert "classes" not in caplog.text


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    """The Debian Fashion-MNIST files laid out as torchvision expects (ROOT/FashionMNIST/raw, uncompressed)."""
    src = Path(FASHION_MNIST_DIR)
    if not (src / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST IDX files not installed")
    root = tmp_path_factory.mktemp("tv")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte",
                 "train-labels-idx1-ubyte"):
        gz = src / f"{name}.gz"
        if gz.is_file():
            with gzip.open(gz) as f, open(raw / name, "wb") as out:
                shutil.copyfileobj(f, out)
    return root


def test_torchvision_dataset_reads_the_same_images_as_the_packaged_set(fmnist_root):
    pytest.importorskip("torchvision")
    tv = load_dataset(f"torchvision:FashionMNIST:{fmnist_root}")
    ours = load_dataset("fashion-mnist")
    assert len(tv) == len(ours) == 10_000 and np.array_equal(tv.labels, ours.labels)
    assert np.array_equal(np.asarray(tv.load(123)), np.asarray(ours.load(123)))
    assert tv.classes[0].startswith("T-shirt")
    sub = load_dataset(f"torchvision:FashionMNIST:{fmnist_root}", limit=50, subsample="stratified")
    assert len(sub) == 50 and np.bincount(sub.labels).tolist() == [5] * 10
    assert np.array_equal(np.asarray(sub.load(0)), np.asarray(ours.load(int(sub.rows[0]))))


@pytest.mark.parametrize("spec,match", [
    ("torchvision:CIFAR10:{empty}", "not found under .*--download"),
    ("torchvision:NotADataset:{empty}", "no dataset"),
    ("torchvision:FashionMNIST:{empty}:validation", "split"),
    ("torchvision:CIFAR10", "NAME:ROOT"),
])
def test_torchvision_dataset_errors(spec, match, tmp_path):
    pytest.importorskip("torchvision")
    with pytest.raises(UserError, match=match):
        load_dataset(spec.format(empty=tmp_path))


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards of real images (sklearn's digits, 0-9) with .cls labels and a .json sidecar; one corrupt .jpg."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path_factory.mktemp("wds")
    n = 600
    imgs = (d.images[:n] * 255 / 16).astype(np.uint8)
    for s in range(3):
        with tarfile.open(folder / f"digits-{s:03d}.tar", "w") as tar:
            for i in range(s * 200, (s + 1) * 200):
                key = f"sample{i:06d}"
                _add(tar, f"{key}.png", _png(imgs[i]))
                _add(tar, f"{key}.cls", str(int(d.target[i])).encode())
                _add(tar, f"{key}.json", json.dumps({"i": i}).encode())
            if s == 1:
                _add(tar, "broken000001.jpg", b"\xff\xd8\xff\xe0 truncated")
                _add(tar, "broken000001.cls", b"3")
    return folder, imgs, d.target[:n]


def test_webdataset_shards_by_folder_glob_and_brace_range(shards):
    folder, imgs, y = shards
    specs = [str(folder), str(folder / "digits-*.tar"), str(folder / "digits-{000..002}.tar")]
    assert all(len(expand_shards(s)) == 3 for s in specs)
    ds = load_dataset(f"webdataset:{specs[2]}")
    assert len(ds) == 601  # 600 digits + the broken one, counted as a row and skipped at decode time
    keep = [i for i, k in enumerate(ds.keys) if "broken" not in k]
    assert np.array_equal(ds.labels[keep], y)
    assert np.array_equal(np.asarray(ds.load(keep[250]).convert("L")), imgs[250])
    from gpuclust.data import SkipImage

    with pytest.raises(SkipImage):
        ds.load(ds.keys.index("1:broken000001"))
    assert ds.fingerprint() == load_dataset(f"webdataset:{folder}").fingerprint()


def test_webdataset_errors(tmp_path):
    with pytest.raises(UserError, match="no .tar shards"):
        load_dataset(f"webdataset:{tmp_path}")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"webdataset:{tmp_path}/s-{{0..3}}.tar")
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="not an uncompressed tar"):
        load_dataset(f"webdataset:{tmp_path}")


def test_webdataset_run_end_to_end(shards, tmp_path):
    folder, _, _ = shards
    out = tmp_path / "run"
    r = run_cli("-q", "--dataset", f"webdataset:{folder}", "--encoder", "pixels", "--reduce", "pca", "--dims", "20",
                "--k", "10", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--no-silhouette-umap",
                "--output", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["ami"] > 0.5
    skipped = (out / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 2 and "broken" not in skipped[0]  # header + the one corrupt member
    # Each row names its shard and member, so the corrupt one can be found.
    assert skipped[1].startswith(f"400,{folder.resolve() / 'digits-001.tar'}:broken000001.jpg,"), skipped[1]
    table = pd.read_parquet(out / "labels.parquet")
    paths = table["path"]
    assert len(paths) == 600 and paths[0] == f"{folder.resolve() / 'digits-000.tar'}:sample000000.png"
    assert table["class_true"].isna().all() and table["label_true"].notna().all()  # .cls integers have no names


def _digit_shard(path, rows, no_cls=()):
    """A shard of real digit images with .cls labels, except for the samples in `no_cls`. Returns the labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    with tarfile.open(path, "w") as tar:
        for i in rows:
            _add(tar, f"sample{i:06d}.png", _png((d.images[i] * 255 / 16).astype(np.uint8)))
            if i not in no_cls:
                _add(tar, f"sample{i:06d}.cls", str(int(d.target[i])).encode())
    return d.target[list(rows)]


def test_webdataset_samples_without_cls_are_counted_skips(tmp_path):
    from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, ReduceConfig, RunConfig
    from gpuclust.data import SkipImage
    from gpuclust.pipeline import run_pipeline

    y = _digit_shard(tmp_path / "mixed-000.tar", range(60), no_cls=(5, 40))
    ds = load_dataset(f"webdataset:{tmp_path}")
    assert ds.labels is not None and len(ds) == 60 and sorted(ds.bad) == [5, 40]
    assert np.array_equal(np.delete(ds.labels, [5, 40]), np.delete(y, [5, 40])) and ds.classes is None
    with pytest.raises(SkipImage, match="no label"):
        ds.load(40)
    part = ds.take(np.array([40, 0]))  # --limit/--subsample keep the skips and the paths
    assert part.bad == {0: ds.bad[40]} and part.paths == [ds.paths[40], ds.paths[0]]
    cfg = RunConfig(data=DataConfig(f"webdataset:{tmp_path}"),
                    encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "c")), reduce=ReduceConfig("pca", 10),
                    cluster=ClusterConfig("kmeans"), device="cpu", output=str(tmp_path / "run"))
    r = run_pipeline(cfg, progress=False)
    assert r.n_skipped == 2 and r.metrics["n_rows"] == 58
    skipped = (r.output / "skipped.csv").read_text().splitlines()
    assert skipped[1] == f"5,{tmp_path.resolve() / 'mixed-000.tar'}:sample000005.png,row has no label (no .cls member)"


def test_webdataset_truncated_last_shard_keeps_the_labels(tmp_path):
    _digit_shard(tmp_path / "t-000.tar", range(30))
    y = _digit_shard(tmp_path / "t-001.tar", range(30, 60))
    with tarfile.open(tmp_path / "t-001.tar") as tar:
        cut = tar.getmember("sample000059.cls").offset  # the copy stopped before the last sample's label
    with open(tmp_path / "t-001.tar", "r+b") as f:
        f.truncate(cut)
    ds = load_dataset(f"webdataset:{tmp_path}")
    assert len(ds) == 60 and ds.labels is not None and ds.bad == {59: "row has no label (no .cls member)"}
    assert np.array_equal(ds.labels[30:59], y[:29]) and ds.load(58).mode == "RGB"


def test_webdataset_without_most_cls_is_unlabelled(tmp_path, caplog):
    _digit_shard(tmp_path / "u-000.tar", range(20), no_cls=range(20))
    ds = load_dataset(f"webdataset:{tmp_path}")
    assert ds.labels is None and ds.classes is None and not ds.bad and not caplog.records
    _digit_shard(tmp_path / "u-000.tar", range(20), no_cls=range(3, 20))  # 3 of 20: taken as unlabelled, said so
    ds = load_dataset(f"webdataset:{tmp_path}")
    assert ds.labels is None and not ds.bad and "only 3 of 20 samples have a .cls label" in caplog.text
