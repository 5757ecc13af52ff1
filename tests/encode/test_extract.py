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


def _rows_batch(ds, transform, rows, num_workers=0):
    from gpuclust.encode.extract import _Collate, _Rows

    items = _Rows(ds, rows, transform)
    assert items.split is not None
    loader = torch.utils.data.DataLoader(items, batch_size=len(rows), num_workers=num_workers,
                                         collate_fn=_Collate(items.split[1]))
    return next(iter(loader))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batched_to_tensor_and_normalise_equal_the_per_image_transform_to_the_bit(folder, num_workers):
    """timm's evaluation Compose and torchvision's ImageClassification preset end in to-tensor and normalise, which
    extraction does on the whole batch: the same tensors as the transform image by image, a bad row still skipped."""
    import timm
    import torchvision.transforms as T
    from torchvision.models import MobileNet_V2_Weights

    from gpuclust.encode.transforms import split_transform

    cfg = timm.data.resolve_data_config({}, model=timm.create_model("resnet18", pretrained=False))
    for transform in (timm.data.create_transform(**cfg, is_training=False),
                      MobileNet_V2_Weights.IMAGENET1K_V2.transforms()):
        rows, batch, bad = _rows_batch(folder, transform, range(2, 8), num_workers)
        want = torch.stack([transform(folder.load(r)) for r in rows.tolist()])
        assert rows.tolist() == [2, 3, 4, 6, 7] and [r for r, _ in bad] == [5]
        assert batch.dtype == torch.float32 and torch.equal(batch, want)
    assert split_transform(T.Compose([T.ToTensor()])) is None and split_transform(lambda im: im) is None


def test_a_batch_mixing_finished_and_unfinished_images_equals_the_per_image_transform():
    """A row whose image is not RGB runs the whole transform alone; a batch holding both kinds is the same stack."""
    import torchvision.transforms as T
    from PIL import Image

    from gpuclust.data.base import ArrayDataset
    from gpuclust.encode.extract import _Collate, _Rows

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)), None]
    images[1] = images[0].convert("L").convert("RGB")

    class _Images(ArrayDataset):
        def load(self, i):
            return images[i] if i < 2 else images[0].convert("L")

    transform = T.Compose([T.Resize(6), T.CenterCrop(6), T.ToTensor(), T.Normalize([0.5], [0.25])])
    items = _Rows(_Images(spec="mixed", images=np.zeros((3, 1, 1), np.uint8)), range(3), transform)
    assert isinstance(items[0][1], np.ndarray) and isinstance(items[2][1], torch.Tensor)  # (an "L" image: whole)
    assert torch.equal(items[2][1], transform(images[0].convert("L")))
    want = torch.stack([transform(images[0]), transform(images[1])])
    assert torch.equal(_Collate(items.split[1])([items[0], items[1]])[1], want)
    mixed = [items[0], (1, transform(images[1]), "")]
    assert torch.equal(_Collate(items.split[1])(mixed)[1], want[:2])
