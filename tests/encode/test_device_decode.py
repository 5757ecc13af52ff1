"""The GPU JPEG path's preprocessing, run on the CPU here (same torch ops) against torchvision/timm transforms."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from gpuclust.encode.device_decode import DevicePreprocess, decode_batch  # noqa: E402


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos():
    imgs = load_sample_images().images  # two real photographs, 427x640
    return [imgs[0], imgs[1][40:400, 100:600], imgs[0][:300, :250]]


def _as_tensor(data: bytes):
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def test_matches_torchvision_transform_on_real_photos(photos):
    import torchvision.models as tvm

    t = tvm.ResNet50_Weights.IMAGENET1K_V2.transforms()
    prep = DevicePreprocess.from_config({"resize_size": list(t.resize_size), "crop_size": list(t.crop_size),
                                         "mean": list(t.mean), "std": list(t.std), "interpolation": "bilinear"})
    assert (prep.resize, prep.crop) == (232, 224)
    datas = [_jpeg_bytes(p) for p in photos]
    batch, failed = decode_batch([_as_tensor(d) for d in datas], prep, "cpu")
    assert failed == [] and batch.shape == (3, 3, 224, 224)
    ref = torch.stack([t(Image.open(io.BytesIO(d)).convert("RGB")) for d in datas])
    # Same decoder and antialiased bilinear resize, but PIL rounds to uint8 after resizing and its antialias kernel
    # differs slightly: about 0.3 grey levels on average (0.005 in normalised units); a pixel's shift gives 0.1.
    diff = (batch - ref).abs()
    assert float(diff.mean()) < 0.02 and float(torch.quantile(diff.flatten(), 0.99)) < 0.1
    # A wrong crop offset, a transposed image or missed normalisation lands far away.
    assert float((batch - ref.flip(-1)).abs().mean()) > 0.1


def test_timm_config_resize_from_crop_pct():
    prep = DevicePreprocess.from_config({"input_size": [3, 224, 224], "crop_pct": 0.875, "interpolation": "bicubic",
                                         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert (prep.resize, prep.crop, prep.interpolation) == (256, 224, "bicubic")


def test_bad_bytes_are_reported_not_fatal(photos):
    good = _jpeg_bytes(photos[0])
    datas = [_as_tensor(good), _as_tensor(b"not a jpeg at all" * 20), _as_tensor(good[: len(good) // 3] + b"\0" * 10)]
    prep = DevicePreprocess(resize=64, crop=56)
    batch, failed = decode_batch(datas, prep, "cpu")
    assert 1 in failed and 0 not in failed
    assert batch.shape[0] == 3 - len(failed) and torch.isfinite(batch).all()


def test_pipeline_device_decode_matches_pil_path(tmp_path):
    """--decode device on the CPU backend (torchvision's decoder, same code path as nvJPEG on a GPU): the same rows,
    embeddings close to the PIL path's; a PNG and a corrupt JPEG take the CPU fallback (kept / skipped)."""
    from gpuclust.backend import resolve_backend
    from gpuclust.config import DataConfig, EncodeConfig, RunConfig
    from gpuclust.data import load_dataset
    from gpuclust.pipeline import encode_stage
    from helpers import write_digit_images

    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=8, classes=(0, 1, 7), ext=".jpg")
    write_digit_images(root / "more", n_per_class=2, classes=(3,), ext=".png")
    (root / "class_0" / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    ds = load_dataset(f"folder:{root}")
    be = resolve_backend("cpu")
    out = {}
    for decode in ("cpu", "device"):
        cfg = RunConfig(data=DataConfig(f"folder:{root}"),
                        encode=EncodeConfig("mobilenetv2", cache_dir=str(tmp_path / "store"), decode=decode,
                                            shard_size=10, batch_size=8))
        emb, info = encode_stage(ds, cfg, be, progress=False)
        out[decode] = emb
    a, b = out["cpu"], out["device"]
    assert np.array_equal(a.rows, b.rows) and len(a.rows) == len(ds) - 1
    assert [r for r, _ in a.skipped] == [r for r, _ in b.skipped] and len(b.skipped) == 1
    na, nb = a.X / np.linalg.norm(a.X, axis=1, keepdims=True), b.X / np.linalg.norm(b.X, axis=1, keepdims=True)
    # MobileNetV2 features of upscaled 8x8 digits are all alike (cosine 0.93 between different images), so check
    # identity instead: each device-decoded row's nearest PIL-decoded row is itself (a row mix-up breaks this).
    nearest = (nb @ na.T).argmax(1)
    assert (nearest == np.arange(len(nb))).mean() >= 0.9
    assert (na * nb).sum(1).min() > 0.95


def test_decode_device_needs_files(tmp_path):
    from helpers import run_cli

    r = run_cli("-q", "--dataset", "digits", "--decode", "device", "--device", "cpu", "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "needs image files" in r.stderr
