"""Faults a real run meets: odd images, broken numbers, out-of-memory, a full disk. Each ends in a counted skip or
one clear line with exit 2; nothing already stored is lost."""
import errno

import numpy as np
import pytest
import torch
from PIL import Image

from gpuclust.backend import resolve_backend
from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, EvalConfig, ReduceConfig, RunConfig
from gpuclust.errors import UserError
from gpuclust.pipeline import check_finite, memory_hint, run_pipeline
from helpers import write_digit_images


def _cfg(tmp_path, spec, **kw):
    return RunConfig(data=DataConfig(spec), encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "cache"),
                                                                **kw.pop("encode", {})),
                     reduce=ReduceConfig(kw.pop("reduce", "pca"), 5), cluster=ClusterConfig("kmeans", k=kw.pop("k", 2)),
                     evaluate=EvalConfig(silhouette_umap=kw.pop("silhouette_umap", False)),  # faults, not metrics
                     device="cpu", output=str(tmp_path / "run"))


def test_photo_formats_load_upright_rgb(tmp_path):
    from gpuclust.data import load_dataset

    root = tmp_path / "imgs" / "a"
    root.mkdir(parents=True)
    Image.new("CMYK", (20, 10), (0, 255, 0, 0)).save(root / "cmyk.jpg")
    rotated = Image.new("RGB", (40, 20), "red")
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(root / "exif.jpg", exif=exif)
    Image.new("RGB", (4000, 3000), "blue").save(root / "big.png")  # 12 MP: large but legal
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    by_name = {p.rsplit("/", 1)[1]: ds.load(i) for i, p in enumerate(ds.paths)}
    assert by_name["cmyk.jpg"].mode == "RGB"
    assert by_name["exif.jpg"].size == (20, 40)  # the EXIF rotation applied
    assert by_name["big.png"].size == (4000, 3000)


def test_decompression_bomb_is_a_counted_skip(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=10, classes=(0, 1))
    Image.new("L", (300, 300)).save(root / "class_0" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300x300 is then beyond twice the limit
    r = run_pipeline(_cfg(tmp_path, f"imagefolder:{root}"), progress=False)
    assert r.n_skipped == 1 and "bomb.png" in (r.output / "skipped.csv").read_text()


def test_symlink_loop_and_dangling_links_are_ignored(tmp_path):
    from gpuclust.data import load_dataset

    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=3, classes=(0,))
    (root / "class_0" / "loop").symlink_to(root / "class_0")
    (root / "class_0" / "gone.png").symlink_to(tmp_path / "missing.png")
    assert len(load_dataset(f"imagefolder:{root}")) == 3


def test_non_finite_embeddings_name_the_rows():
    be = resolve_backend("cpu")
    X = np.ones((30, 4), np.float32)
    X[[3, 17], 1] = [np.nan, np.inf]
    with pytest.raises(UserError, match=r"2 embedding\(s\) contain NaN or inf \(dataset rows 103, 117\)"):
        check_finite(be, X, np.arange(100, 130))


def test_all_identical_images_end_cleanly(tmp_path):
    root = tmp_path / "imgs" / "a"
    root.mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (16, 16), "gray").save(root / f"{i}.png")
    cfg = _cfg(tmp_path, f"folder:{tmp_path / 'imgs'}", reduce="none", k=3)
    m = run_pipeline(cfg, progress=False).metrics
    assert m["n_clusters"] >= 1 and m["silhouette"] is None  # undefined, not a crash


def test_out_of_memory_halves_the_encoder_batch(tmp_path, monkeypatch, caplog):
    from gpuclust.encode import models

    real = models.pixels

    def flaky_pixels(weights=None):
        enc = real(weights)

        class OOMAbove8(torch.nn.Module):
            def forward(self, x):
                if x.shape[0] > 8:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return x.flatten(1)

        enc.model = OOMAbove8()
        return enc

    monkeypatch.setitem(models.ENCODERS, "pixels", models.EncoderEntry(flaky_pixels, "test"))
    r = run_pipeline(_cfg(tmp_path, "digits", encode={"batch_size": 64}, k=10), progress=False)
    assert r.metrics["n_rows"] == 1797 and r.metrics["ami"] > 0.5
    assert "batch size halved to 32" in caplog.text and "batch size halved to 8" in caplog.text
    assert caplog.text.count("batch size halved") == 3  # 64 -> 32 -> 16 -> 8, then it stays at 8


def test_out_of_memory_in_clustering_is_one_line():
    with pytest.raises(UserError, match="cluster: out of memory; lower --dims"):
        with memory_hint("cluster"):
            raise MemoryError("Out of memory allocating 80,000,000,000 bytes")
    with pytest.raises(RuntimeError, match="unrelated"):
        with memory_hint("cluster"):
            raise RuntimeError("unrelated failure")  # an internal error stays an internal error


def test_disk_full_keeps_the_store_consistent(tmp_path, monkeypatch):
    import gpuclust.store as store

    real_replace = store.os.replace
    calls = {"n": 0}

    def full_after_two(src, dst):
        if str(dst).endswith(".npz"):
            calls["n"] += 1
            if calls["n"] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", full_after_two)
    cfg = _cfg(tmp_path, "digits", encode={"shard_size": 300}, k=10)
    with pytest.raises(UserError, match="No space left on device.*--cache-dir"):
        run_pipeline(cfg, progress=False)
    shards = sorted((tmp_path / "cache").glob("*/shard-*.npz"))
    assert len(shards) == 2 and not list((tmp_path / "cache").glob("*/.*tmp"))
    monkeypatch.setattr(store.os, "replace", real_replace)
    r = run_pipeline(cfg, progress=False)  # space freed: the rerun keeps the two shards and writes the rest
    assert r.timings["rows_reused"] == 600 and r.timings["rows_encoded"] == 1197


def test_unreadable_file_is_a_counted_skip(tmp_path, monkeypatch):
    """A file the user may not read. Tests run as root here, where chmod 000 does not stop reads, so for root the
    permission error is raised where the OS would raise it (opening the file)."""
    import builtins
    import os

    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=10, classes=(0, 1))
    locked = root / "class_0" / "003.png"
    locked.chmod(0)
    if os.geteuid() == 0:
        real_open = builtins.open

        def guarded(file, *a, **kw):
            if str(file) == str(locked):
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, *a, **kw)

        monkeypatch.setattr(builtins, "open", guarded)
    res = run_pipeline(_cfg(tmp_path, f"imagefolder:{root}"), progress=False)
    assert res.n_skipped == 1 and res.metrics["n_skipped"] == 1
    skipped = (tmp_path / "run" / "skipped.csv").read_text()
    assert "003.png" in skipped and "Permission" in skipped
    assert res.metrics["n_rows"] == 19


def test_output_directory_not_writable_is_one_line(tmp_path):
    from helpers import run_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = run_cli("-q", "--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--device", "cpu",
                "--output", str(blocker / "run"))
    assert r.returncode == 2 and "cannot write there" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_huge_but_legal_image_goes_through(tmp_path):
    """A 48-megapixel photo (below the decompression-bomb guard) is decoded and encoded like any other image."""
    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=10, classes=(0, 1))
    big = np.random.default_rng(0).integers(0, 255, (6000, 8000, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "class_1" / "huge.jpg", quality=70)
    r = run_pipeline(_cfg(tmp_path, f"imagefolder:{root}"), progress=False)
    assert r.n_skipped == 0 and r.metrics["n_rows"] == 21


def test_folder_with_one_class_ends_cleanly(tmp_path):
    """One class: k defaults to 1, the label metrics are defined (a perfect match) and the silhouette is not."""
    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=25, classes=(3,))
    cfg = _cfg(tmp_path, f"imagefolder:{root}", k=None)
    r = run_pipeline(cfg, progress=False)
    assert r.metrics["n_clusters"] == 1 and r.metrics["ami"] == pytest.approx(1.0)
    assert r.metrics["silhouette"] is None
