"""JPEG decoding and preprocessing on the GPU: file bytes in, a normalised (B, 3, crop, crop) batch out.

torchvision's `decode_jpeg(..., device="cuda")` decodes a list of encoded images with nvJPEG in one call; resizing,
cropping and normalising then run on the device too, so the CPU only reads files. Images nvJPEG refuses (truncated,
not a JPEG, CMYK) are retried one by one so a single bad file costs only itself: the caller gets their indices back and
decodes them on the CPU or skips them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DevicePreprocess:
    """Resize the shorter side to `resize`, centre-crop `crop`, scale to [0, 1], normalise: timm/torchvision eval."""

    resize: int = 256
    crop: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @classmethod
    def from_config(cls, cfg: dict) -> "DevicePreprocess":
        """From an encoder's preprocessing record (timm data config or torchvision's resize/crop sizes)."""
        crop = int(cfg.get("crop_size", cfg.get("input_size", [3, 224, 224])[-1:])[-1])
        if "resize_size" in cfg:
            resize = int(cfg["resize_size"][-1])
        else:  # timm: crop_pct gives the resize size
            resize = int(np.floor(crop / float(cfg.get("crop_pct", 0.875))))
        interp = str(cfg.get("interpolation", "bilinear"))
        return cls(resize, crop, tuple(cfg.get("mean", cls.mean)), tuple(cfg.get("std", cls.std)),
                   interp if interp in ("bilinear", "bicubic") else "bilinear")


def decode_batch(encoded: list, prep: DevicePreprocess, device) -> tuple[object, list[int]]:
    """Decode and preprocess `encoded` (1-D uint8 CPU tensors of JPEG bytes) on `device`.

    Returns (batch, failed): batch is (n_ok, 3, crop, crop) float32 in the input order without the failed ones."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        failed: list[int] = []
    except RuntimeError:
        images, failed = [], []
        for i, data in enumerate(encoded):
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                failed.append(i)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    out = torch.empty((len(images), 3, prep.crop, prep.crop), device=device, dtype=torch.float32)
    for j, img in enumerate(images):
        out[j] = _resize_crop(img, prep)[0]
    return (out - mean) / std, failed


def _resize_crop(img, prep: DevicePreprocess):
    """(3, H, W) uint8 -> (1, 3, crop, crop) float in [0, 255]: shorter side to `resize` (antialiased), centre crop."""
    import torch.nn.functional as F

    _, h, w = img.shape
    # torchvision's Resize(int): the short side to `resize`, the long side truncated (not rounded) to keep the ratio.
    if h <= w:
        nh, nw = prep.resize, int(prep.resize * w / h)
    else:
        nh, nw = int(prep.resize * h / w), prep.resize
    x = F.interpolate(img.unsqueeze(0).float(), size=(nh, nw), mode=prep.interpolation, antialias=True,
                      align_corners=False)
    top, left = int(round((nh - prep.crop) / 2.0)), int(round((nw - prep.crop) / 2.0))  # as torchvision's center_crop
    return x[:, :, top:top + prep.crop, left:left + prep.crop].clamp_(0, 255)
