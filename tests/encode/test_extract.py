"""Extraction streams every shard to encode through one DataLoader: the shards come out whole and in order, each
equal to encoding its rows one by one, with an undecodable row skipped in its own shard, with and without workers."""
import numpy as np
import pytest
import torch

from gpuclust.backend import resolve_backend
from gpuclust.data import load_dataset
from gpuclust.encode import build_encoder
from gpuclust.encode.extract import encode_shards, prepare_forward
from helpers import write_digit_images


class _Count:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract") / "imgs"
    write_digit_images(root, n_per_class=15, classes=(0, 1, 7))
    good = (root / "class_0" / "003.png").read_bytes()
    (root / "class_0" / "005.png").write_bytes(good[: len(good) // 2])  # truncated: row 5, in the first shard
    (root / "class_1" / "008.png").write_text("not an image")  # row 23, in the third
    return load_dataset(f"imagefolder:{root}")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shards_stream_through_one_loader_and_equal_row_by_row_encoding(folder, num_workers):
    ds = folder
    assert ds.paths[5].endswith("class_0/005.png") and ds.paths[23].endswith("class_1/008.png")
    enc = build_encoder("pixels")
    be = resolve_backend("cpu")
    fwd = prepare_forward(enc, be, 4)
    # Gaps between the shards (others already stored), and batches of 4 that straddle shard boundaries.
    shards = [range(0, 7), range(7, 10), range(20, 33), range(40, 45)]
    bar = _Count()
    out = list(encode_shards(ds, enc, fwd, be, shards, 4, num_workers, bar))
    assert [pos for pos, *_ in out] == [0, 1, 2, 3] and bar.n == sum(len(r) for r in shards)
    for pos, X, kept, bad in out:
        rows = shards[pos]
        skipped = {5, 23} & set(rows)
        assert [r for r, _ in bad] == sorted(skipped) and all(reason for _, reason in bad)
        assert kept.tolist() == [r for r in rows if r not in skipped]
        with torch.inference_mode():
            want = np.stack([enc.model(enc.transform(ds.load(r)).unsqueeze(0))[0].numpy() for r in kept])
        np.testing.assert_allclose(X, want, rtol=1e-6, atol=1e-6)


def test_an_empty_shard_comes_out_empty_and_the_consumer_runs_outside_inference_mode(folder):
    enc = build_encoder("pixels")
    be = resolve_backend("cpu")
    got = []
    for pos, X, kept, bad in encode_shards(folder, enc, prepare_forward(enc, be, 4), be,
                                           [range(0, 0), range(0, 3), range(3, 3)], 4, 0, _Count()):
        assert not torch.is_inference_mode_enabled()  # the store write between shards runs as usual
        got.append((pos, X.shape, kept.tolist(), bad))
    assert got == [(0, (0, enc.dim), [], []), (1, (3, enc.dim), [0, 1, 2], []), (2, (0, enc.dim), [], [])]
