"""Evaluation transforms (PIL image -> float tensor) and their records: timm's and torchvision's own, the study's
recipe (`--preprocess study`), and raw pixels. The record is part of the store key (it changes the numbers)."""
from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Callable

from ..errors import UserError
from .weights import timm_module, torch_module

if TYPE_CHECKING:
    from .encoder import Encoder

log = logging.getLogger(__name__)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _jsonable(cfg: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def timm_transform(model, input_size: int | None = None) -> tuple[Callable, dict]:
    """timm's own evaluation transform from the model's pretrained config (at `input_size` px when given)."""
    timm = timm_module()
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

        torch = torch_module()
        img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        t = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        t = t.to(torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return t.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"PixelsTransform(size={self.size}, mean={self.mean}, std={self.std})"


class BatchTail:
    """torchvision's `ToTensor()` then `Normalize(mean, std)` on a whole batch of RGB uint8 images ((H, W, 3) arrays,
    all one size): the same float operations in the same order as on one image (uint8 to float32, divide by 255,
    subtract the mean, divide by the std), so the batch equals the stacked per-image tensors to the bit. Per image
    these two steps cost more than the resize before them (a dozen small torch calls and a float copy each);
    on the whole batch they are four passes over one array."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, arrays) -> "torch.Tensor":  # noqa: F821
        import numpy as np

        torch = torch_module()
        u8 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        x = u8.to(torch.float32).div_(255)
        return x.sub_(self._stat(self.mean, torch)).div_(self._stat(self.std, torch))

    @staticmethod
    def _stat(values, torch):
        t = torch.as_tensor(values, dtype=torch.float32)
        return t.view(-1, 1, 1) if t.ndim == 1 else t  # (as torchvision's normalize shapes it)


def _to_tensor_types() -> tuple:
    """torchvision's ToTensor and timm's MaybeToTensor (which calls the same to_tensor on images), as loaded."""
    types = [sys.modules["torchvision.transforms"].ToTensor]
    timm_transforms = sys.modules.get("timm.data.transforms")
    if timm_transforms is not None and hasattr(timm_transforms, "MaybeToTensor"):
        types.append(timm_transforms.MaybeToTensor)
    return tuple(types)


class _PresetHead:
    """The resize and centre crop of torchvision's `ImageClassification` preset (its forward pass up to the tensor)."""

    def __init__(self, preset):
        self.preset = preset

    def __call__(self, img):
        F = sys.modules["torchvision.transforms.functional"]
        p = self.preset
        img = F.resize(img, p.resize_size, interpolation=p.interpolation, antialias=p.antialias)
        return F.center_crop(img, p.crop_size)


def split_transform(transform) -> tuple[Callable, BatchTail] | None:
    """(per-image head, batch tail) of a transform that ends in to-tensor and normalise: torchvision's
    `Compose([..., ToTensor(), Normalize()])` (timm's evaluation transforms) or its `ImageClassification` preset
    (torchvision weights; its uint8 -> float step divides by 255 too). The head's PIL steps run per image,
    `BatchTail` does the rest on the batch. None for any other transform (it then runs whole, per image)."""
    tv = sys.modules.get("torchvision.transforms")  # (these transforms exist only once torchvision is imported)
    if tv is None:
        return None
    presets = sys.modules.get("torchvision.transforms._presets")
    if presets is not None and type(transform) is presets.ImageClassification:
        return _PresetHead(transform), BatchTail(transform.mean, transform.std)
    if type(transform) is not tv.Compose or len(transform.transforms) < 2:
        return None
    *head, to_tensor, normalize = transform.transforms
    if type(to_tensor) not in _to_tensor_types() or type(normalize) is not tv.Normalize:
        return None
    return tv.Compose(head), BatchTail(normalize.mean, normalize.std)


# The study's normalisation (zs-ssl-clustering, data_transformations.NORMALIZATION), chosen by model name in its
# embed.py: CLIP's statistics for models whose name starts with "clip", ImageNet's for every other model and for raw
# pixels, whatever statistics the weights were trained with.
STUDY_NORMALIZATION = {"imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                       "clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])}
STUDY_PIXELS_MAX = 32  # the study's raw-pixel baseline: min(32, the dataset's own image size) px


def study_normalization(name: str) -> str:
    """Which of the study's normalisations an encoder's name selects: "clip" or "imagenet"."""
    return "clip" if name.startswith("clip") else "imagenet"


def study_preprocess(enc: "Encoder", native_size: int | None = None) -> "Encoder":
    """The study's own transform, step for step: torchvision's Resize(S) (bilinear, its default) and CenterCrop(S),
    ToTensor, Normalize with the study's statistics for the encoder's name. S is 224 for encoders; for raw pixels
    the dataset's own size up to 32 (`native_size`, the shorter side of its images; 32 when unknown)."""
    if "mean" not in enc.key.get("preprocess", {}):
        raise UserError(f"--preprocess study does not apply to {enc.name}")
    torch = torch_module()
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
