"""Thumbnails: written once per image identity, reused by every dataset that holds the same images."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from gpuclust.data import load_dataset
from gpuclust.errors import UserError
from gpuclust.explore.thumbs import THUMB_SIZE, ThumbnailCache, sample_rows, thumbnail_bytes
from helpers import write_digit_images


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_small_images_keep_their_size_and_large_ones_fit():
    ds = load_dataset("fashion-mnist", limit=3)
    with Image.open(io.BytesIO(thumbnail_bytes(ds.load(0)))) as im:
        assert im.format == "WEBP" and im.size == (28, 28)
    wide = Image.new("RGB", (400, 200), (200, 30, 30))
    with Image.open(io.BytesIO(thumbnail_bytes(wide))) as im:
        assert im.size == (THUMB_SIZE, THUMB_SIZE // 2)
        assert np.abs(np.asarray(im.convert("RGB"), float) - (200, 30, 30)).mean() < 6  # the colour survives


def test_ensure_writes_once_and_files_decode(tmp_path):
    ds = load_dataset("fashion-mnist", limit=300)
    cache = ThumbnailCache(tmp_path / "thumbs")
    rows = np.arange(0, 300, 3)
    got = cache.ensure(ds, rows)
    assert sorted(got) == rows.tolist()
    for r in rows[:5].tolist():
        assert got[r].parent.parent == tmp_path / "thumbs" and got[r].suffix == ".webp"
        with Image.open(got[r]) as im:
            assert im.size == (28, 28)
            want = np.asarray(ds.load(r).convert("L"), float)
            assert np.abs(np.asarray(im.convert("L"), float) - want).mean() < 12  # the row's own image
    before = {p: p.stat().st_mtime_ns for p in _files(tmp_path)}
    assert len(before) == len(rows)
    again = cache.ensure(ds, rows)
    assert again == got
    assert {p: p.stat().st_mtime_ns for p in _files(tmp_path)} == before  # nothing written the second time


def test_datasets_holding_the_same_images_share_files(tmp_path):
    full = load_dataset("digits")
    part = full.take(np.array([40, 7, 1000]))
    cache = ThumbnailCache(tmp_path)
    a = cache.ensure(full, np.arange(0, 1100))
    n_files = len(_files(tmp_path))
    b = cache.ensure(part, np.arange(3))
    assert [b[0], b[1], b[2]] == [a[40], a[7], a[1000]]
    assert len(_files(tmp_path)) == n_files  # the subset wrote nothing
    with Image.open(b[0]) as im:
        assert im.size == (8, 8)


def test_rows_without_identity_are_keyed_by_fingerprint(tmp_path, monkeypatch):
    ds = load_dataset("digits").take(np.arange(20))
    monkeypatch.setattr(type(ds), "row_ids", lambda self: None)
    cache = ThumbnailCache(tmp_path)
    got = cache.ensure(ds, np.arange(20))
    assert len(set(got.values())) == 20  # identical pixels or not, each row has its own file
    other = ds.take(np.arange(1, 20))  # another fingerprint: no sharing without identities
    assert set(cache.ensure(other, [0]).values()).isdisjoint(got.values())


def test_a_broken_image_is_left_out_not_fatal(tmp_path, caplog):
    write_digit_images(tmp_path / "imgs", n_per_class=4, classes=(0, 1))
    (tmp_path / "imgs" / "class_0" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    broken = ds.paths.index(str(tmp_path / "imgs" / "class_0" / "zz_broken.png"))
    with caplog.at_level(logging.WARNING, logger="gpuclust.explore.thumbs"):
        got = ThumbnailCache(tmp_path / "thumbs").ensure(ds, np.arange(len(ds)))
    assert sorted(got) == [r for r in range(len(ds)) if r != broken]
    assert "1 of 9 images could not be loaded" in caplog.text
    with Image.open(got[0]) as im:
        assert im.size == (32, 32)


def test_progress_bar_for_large_work(tmp_path, capsys):
    ds = load_dataset("fashion-mnist", limit=2500)
    ThumbnailCache(tmp_path, workers=2).ensure(ds, np.arange(2500), progress=True)
    assert "thumbnails" in capsys.readouterr().err
    assert len(_files(tmp_path)) == 2500


def test_sample_rows_is_seeded_and_keeps_must():
    assert sample_rows(10, None).tolist() == list(range(10))
    assert sample_rows(10, 10).tolist() == list(range(10))
    must = np.array([999, 3, 3, 500, -1, 5000])
    a = sample_rows(1000, 50, seed=1, must=must)
    assert len(a) == 50 and len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    assert {3, 500, 999} <= set(a.tolist())
    assert np.array_equal(a, sample_rows(1000, 50, seed=1, must=must))
    assert not np.array_equal(a, sample_rows(1000, 50, seed=2, must=must))
    assert sample_rows(1000, 2, must=must).tolist() == [3, 999]  # more must than cap: the first ones given
    assert sample_rows(1000, 0).tolist() == []
    with pytest.raises(UserError):
        sample_rows(1000, -1)


def test_jpeg_photos_are_decoded_small_and_upright(tmp_path):
    from PIL import ImageOps

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(np.kron(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), np.ones((80, 80, 1), np.uint8)))
    photo.save(tmp_path / "imgs" / "a" / "wide.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees, so the upright image is tall
    photo.save(tmp_path / "imgs" / "a" / "turned.jpg", quality=92, exif=exif)
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    got = ThumbnailCache(tmp_path / "thumbs").ensure(ds, [0, 1])
    sizes = {}
    for r in (0, 1):
        with Image.open(got[r]) as im:
            sizes[ds.paths[r].rsplit("/", 1)[1]] = im.size
            want = ImageOps.fit(ds.load(r), im.size)  # the full decode, shrunk the slow way
            assert np.abs(np.asarray(im.convert("RGB"), float) - np.asarray(want, float)).mean() < 12
    assert sizes == {"wide.jpg": (96, 72), "turned.jpg": (72, 96)}
