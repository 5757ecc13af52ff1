"""The one encoder registry (timm's idiom) and user modules as encoders: names list and match patterns, a builder
registered by decorator is created by name, a user's own module encodes real images exactly as the packaged encoder
it wraps, store keys tell modules apart and stay what earlier runs stored under, and encode/ has no import cycle."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpuclust.backend import resolve_backend  # noqa: E402
from gpuclust.encode import (Encoder, create_encoder, encoder_help, is_encoder, list_encoders,  # noqa: E402
                             register_encoder)
from gpuclust.encode import registry  # noqa: E402
from gpuclust.encode.extract import encode_shards, prepare_forward  # noqa: E402
from gpuclust.errors import UserError  # noqa: E402

ENCODE = Path(__file__).resolve().parents[2] / "gpuclust" / "encode"


class _Count:
    n = 0

    def update(self, n):
        self.n += n


class ToTensor32:
    """A small transform with a repr that names its settings (as torchvision's do)."""

    def __init__(self, size=8):
        self.size = size

    def __call__(self, img):
        a = np.asarray(img.convert("RGB").resize((self.size, self.size)), np.float32) / 255
        return torch.from_numpy(a).permute(2, 0, 1).contiguous()

    def __repr__(self):
        return f"ToTensor32(size={self.size})"


def _linear(seed, out=5):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, out))


@pytest.fixture
def clean_registry():
    """Names a test registers are removed afterwards."""
    before = dict(registry.ENCODERS)
    yield
    registry.ENCODERS.clear()
    registry.ENCODERS.update(before)


def test_list_encoders_matches_patterns_like_timm():
    dino = list_encoders("*dino*")
    assert dino == sorted(dino) and len(dino) == 9 and all("dino" in n for n in dino)
    assert list_encoders("*DINO*") == dino  # case does not matter
    assert list_encoders(["pixels", "clip_*"]) == ["clip_rn50", "clip_vitb16", "pixels"]
    everything = list_encoders()
    assert {"efficientnet_lite0", "mobilenetv2", "pixels", "resnet50", "random_vitb16"} <= set(everything)
    assert len(everything) == len(set(everything)) and not any(":" in n for n in everything)
    names = [n for n, _ in encoder_help()]
    assert len(names) == len(set(names)) and names[-3:] == ["timm:NAME", "torchvision:NAME", "checkpoint:PATH"]
    assert set(names[:-3]) == set(everything) and all(h for _, h in encoder_help())


def test_is_encoder_and_the_unknown_name_message():
    assert is_encoder("pixels") and is_encoder("dino_vitb16") and is_encoder("timm:resnet50")
    assert is_encoder("checkpoint:/tmp/x.pth") and not is_encoder("nosuchnet") and not is_encoder("nosuch:x")
    with pytest.raises(UserError, match=r"unknown encoder 'nosuchnet'; known: efficientnet_lite0, mobilenetv2, "
                                        r"pixels, resnet50, .*checkpoint:PATH \(see --list encoders\)"):
        create_encoder("nosuchnet")
    with pytest.raises(UserError, match="--arch applies to checkpoint:PATH only"):
        create_encoder("pixels", arch="torchvision:resnet50")
    with pytest.raises(UserError, match="--preprocess 'fancy': default or study"):
        create_encoder("pixels", preprocess="fancy")


def test_a_builder_registered_by_decorator_is_created_by_name(clean_registry):
    seen = []

    @register_encoder(help="a toy linear encoder")
    def toy_linear(weights=None):
        seen.append(weights)
        return Encoder(_linear(0), transform=ToTensor32(), name="toy_linear")

    @register_encoder
    def toy_bare(weights=None):
        """A toy registered bare, its help from this line."""
        return Encoder(_linear(1), transform=ToTensor32())

    assert is_encoder("toy_linear") and list_encoders("toy_*") == ["toy_bare", "toy_linear"]
    assert ("toy_bare", "A toy registered bare, its help from this line.") in encoder_help()
    enc = create_encoder("toy_linear", weights="w.pt")
    assert seen == ["w.pt"] and enc.name == "toy_linear" and enc.dim == 5
    with pytest.warns(UserWarning, match="replacing the encoder 'toy_linear'"):
        register_encoder("toy_linear")(toy_linear)
    with pytest.raises(ValueError, match="colon"):
        register_encoder("my:toy")(toy_linear)


def test_store_keys_of_the_packaged_encoders_are_unchanged():
    """Embeddings stored by earlier runs stay valid: the keys are exactly what they were before the registry."""
    pixels = {"encoder": "pixels", "weights": "none",
              "preprocess": {"input_size": [3, 32, 32], "interpolation": "bilinear",
                             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    assert create_encoder("pixels").key == pixels
    lite0 = {"encoder": "efficientnet_lite0", "weights": "579344248a93e230",
             "preprocess": {"crop_mode": "center", "crop_pct": 0.875, "input_size": [3, 224, 224],
                            "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    assert json.dumps(create_encoder("efficientnet_lite0").key, sort_keys=True) == json.dumps(lite0, sort_keys=True)
    study = create_encoder("pixels", preprocess="study", native_size=28).key
    assert study["preprocess"] == {"input_size": [3, 28, 28], "resize_size": [28], "crop_size": [28],
                                   "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                                   "std": [0.229, 0.224, 0.225], "recipe": "study"}


def test_a_user_module_encodes_real_images_as_the_named_encoder_does():
    """The packaged MobileNetV2, loaded as the mobilenetv2 builder loads it and wrapped as a user's module with
    torchvision's transform for its weights, gives the named encoder's embeddings on real images."""
    import torchvision.models as tvm

    from gpuclust.data import load_dataset

    ds = load_dataset("digits", limit=8)
    named = create_encoder("mobilenetv2")
    module = create_encoder("mobilenetv2").model.train()  # the user's module, as it might arrive: in train mode
    mine = Encoder(module, transform=tvm.MobileNet_V2_Weights.IMAGENET1K_V1.transforms())
    assert not module.training and mine.dim == named.dim == 1280 and mine.name == "module:MobileNetV2"
    assert mine.key["weights"].startswith("sha256:") and mine.key != named.key
    be, out = resolve_backend("cpu"), []
    for enc in (named, mine):
        (_, X, kept, bad), = encode_shards(ds, enc, prepare_forward(enc, be, 4), be, [range(0, 8)], 4, 0, _Count())
        assert kept.tolist() == list(range(8)) and not bad
        out.append(np.asarray(X))
    np.testing.assert_allclose(out[1], out[0], rtol=1e-6, atol=1e-6)
    assert create_encoder(mine) is mine  # ready objects are accepted where names are
    wrapped = create_encoder(create_encoder("mobilenetv2").model, transform=mine.transform)
    assert wrapped.key == mine.key


def test_user_module_keys_identify_the_weights_and_the_transform():
    a, b = Encoder(_linear(0), transform=ToTensor32()), Encoder(_linear(1), transform=ToTensor32())
    assert a.dim == b.dim == 5 and a.key["weights"] != b.key["weights"]
    assert Encoder(_linear(0), transform=ToTensor32()).key == a.key  # same weights, same key in any process
    assert Encoder(_linear(0), transform=ToTensor32(size=16), dim=5).key != a.key  # another transform
    json.dumps(a.key)  # the store hashes it as JSON
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Flatten())
    before = Encoder(bn, transform=ToTensor32()).key
    bn[0].running_mean += 1  # buffers are weights too
    assert Encoder(bn, transform=ToTensor32()).key != before
    half = Encoder(_linear(0).to(torch.bfloat16), transform=ToTensor32(), dim=5)  # dtypes numpy lacks
    assert half.key["weights"] != a.key["weights"] and half.dim == 5


def test_bad_user_modules_are_one_line_errors():
    with pytest.raises(UserError, match="needs transform="):
        Encoder(_linear(0))
    with pytest.raises(UserError, match="needs transform="):
        create_encoder(_linear(0))
    with pytest.raises(UserError, match=r"must return \(batch, features\); it returned \(1, 3, 8, 8\)"):
        Encoder(torch.nn.Identity(), transform=ToTensor32())
    with pytest.raises(UserError, match="expected a torch.nn.Module"):
        Encoder(object(), transform=ToTensor32())
    with pytest.raises(UserError, match="weights and arch apply to encoder names"):
        create_encoder(_linear(0), weights="w.pt", transform=ToTensor32())


def test_the_builders_positional_order_still_works():
    enc = Encoder("toy", _linear(0).eval(), None, 5, key={"encoder": "toy", "weights": "ones"})
    assert (enc.name, enc.dim, enc.transform, enc.key) == ("toy", 5, None, {"encoder": "toy", "weights": "ones"})
    assert isinstance(enc.model, torch.nn.Sequential)


@pytest.mark.parametrize("module", ["gpuclust.encode.zoo", "gpuclust.encode.models", "gpuclust.encode.registry"])
def test_any_encode_module_imports_first_and_every_name_is_registered(module):
    code = (f"import {module}; from gpuclust.encode import list_encoders as l; "
            "print(len(l()), 'pixels' in l(), 'dino_vitb16' in l())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(list_encoders())), "True", "True"]


def test_encode_modules_import_each_other_without_a_cycle():
    """Every `from .x import` between encode/'s modules, at the top or inside functions, forms no cycle."""
    graph = {}
    for path in ENCODE.glob("*.py"):
        if path.stem == "__init__":
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps

    def visit(name, stack):
        assert name not in stack, f"import cycle: {' -> '.join([*stack, name])}"
        for dep in graph.get(name, ()):
            visit(dep, [*stack, name])

    assert {"models", "zoo", "registry", "encoder", "weights", "transforms", "hub"} <= set(graph)
    for name in graph:
        visit(name, [])
