"""The study's encoder zoo: short names for each pretrained encoder, where its weights come from, how it pools.

Weights come from one of three places, all cached (URLs under `$TORCH_HOME/hub/checkpoints/gpuclust/`, one folder per
URL; timm tags in timm's Hugging Face cache): torchvision's weight URLs, the publishers' own checkpoint URLs (loaded
into torchvision or timm architectures after stripping the wrapper prefix and dropping training heads), or timm's
pretrained tags. Every download goes through `download()`, and `--weights PATH` (or `checkpoint:PATH --arch A`)
loads a local file instead, so offline machines and tests never touch the network.

Each zoo name is registered in the one encoder registry (`registry.py`), as are the `torchvision:NAME` and
`checkpoint:PATH` prefixes.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UserError, exception_line, require
from .encoder import Encoder, finish_encoder
from .hub import hub_create, offline
from .registry import register_encoder, register_prefix
from .transforms import IMAGENET, imagenet_style_transform, timm_transform, torchvision_transform
from .weights import file_identity, load_state_dict, sha256_file

log = logging.getLogger(__name__)
FB = "https://dl.fbaipublicfiles.com"


@dataclass(frozen=True)
class ZooEntry:
    """One encoder of the zoo: its architecture, what it was trained on, where its weights come from, how its
    embedding is pooled and its dimension."""

    arch: str  # torchvision:NAME or timm:NAME (architecture, built without weights)
    training: str
    source: str  # torchvision:ENUM, url:URL, timm:TAG, random
    pooling: str
    dim: int
    timm_kwargs: tuple = ()  # extra create_model arguments, e.g. (("global_pool", "avg"),)
    keep_head: bool = False  # CLIP: the head is the image projection, part of the embedding

    @property
    def help(self) -> str:
        """Its line in `--list encoders`: training, dimension, pooling, where the weights come from."""
        src = self.source if not self.source.startswith("url:") else "publisher URL"
        return f"{self.training}; {self.dim}-d {self.pooling}; weights: {src}"


def _vit(tag: str, dim: int, training: str, **kw) -> ZooEntry:
    arch = "timm:" + tag.split(".")[0]
    return ZooEntry(arch, training, f"timm:{tag}", "CLS token", dim, tuple(kw.items()))


def _rn50_url(training: str, url: str) -> ZooEntry:
    return ZooEntry("torchvision:resnet50", training, f"url:{url}", "global avg-pool", 2048)


ZOO: dict[str, ZooEntry] = {
    "resnet50": ZooEntry("torchvision:resnet50", "ResNet-50, supervised ImageNet-1k", "torchvision:IMAGENET1K_V2",
                         "global avg-pool", 2048),
    "vitb16": ZooEntry("torchvision:vit_b_16", "ViT-B/16, supervised ImageNet-1k", "torchvision:IMAGENET1K_V1",
                       "CLS token", 768),
    "dino_resnet50": _rn50_url("ResNet-50, DINO", f"{FB}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"),
    "dino_vits16": _vit("vit_small_patch16_224.dino", 384, "ViT-S/16, DINO"),
    "dino_vitb16": _vit("vit_base_patch16_224.dino", 768, "ViT-B/16, DINO"),
    "dino_vits8": _vit("vit_small_patch8_224.dino", 384, "ViT-S/8, DINO"),
    "dino_vitb8": _vit("vit_base_patch8_224.dino", 768, "ViT-B/8, DINO"),
    # DINOv2 at 224 px, as the study ran it (timm interpolates the 518-px position embeddings).
    "dinov2_vits14": _vit("vit_small_patch14_dinov2.lvd142m", 384, "ViT-S/14, DINOv2", img_size=224),
    "dinov2_vitb14": _vit("vit_base_patch14_dinov2.lvd142m", 768, "ViT-B/14, DINOv2", img_size=224),
    "dinov2_vitl14": _vit("vit_large_patch14_dinov2.lvd142m", 1024, "ViT-L/14, DINOv2", img_size=224),
    "dinov2_vitg14": _vit("vit_giant_patch14_dinov2.lvd142m", 1536, "ViT-g/14, DINOv2", img_size=224),
    "mocov3_resnet50": _rn50_url("ResNet-50, MoCo v3", f"{FB}/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar"),
    "mocov3_vit_small": ZooEntry("timm:vit_small_patch16_224", "ViT-S/16, MoCo v3",
                                 f"url:{FB}/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar", "CLS token", 384),
    "mocov3_vit_base": ZooEntry("timm:vit_base_patch16_224", "ViT-B/16, MoCo v3",
                                f"url:{FB}/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar", "CLS token", 768),
    "vicreg_resnet50": _rn50_url("ResNet-50, VICReg", f"{FB}/vicreg/resnet50.pth"),
    "swav_resnet50": _rn50_url("ResNet-50, SwAV", f"{FB}/deepcluster/swav_800ep_pretrain.pth.tar"),
    "barlowtwins_resnet50": _rn50_url("ResNet-50, Barlow Twins", f"{FB}/barlowtwins/ljng/resnet50.pth"),
    "clip_rn50": ZooEntry("timm:resnet50_clip", "ResNet-50, CLIP (OpenAI)", "timm:resnet50_clip.openai",
                          "attention pool + projection", 1024, keep_head=True),
    "clip_vitb16": ZooEntry("timm:vit_base_patch16_clip_224", "ViT-B/16, CLIP (OpenAI)",
                            "timm:vit_base_patch16_clip_224.openai", "CLS token + projection", 512,
                            (("num_classes", 512),), keep_head=True),
    "mae_vitb16_cls": _vit("vit_base_patch16_224.mae", 768, "ViT-B/16, MAE", global_pool="token"),
    "mae_vitb16_avg": ZooEntry("timm:vit_base_patch16_224", "ViT-B/16, MAE", "timm:vit_base_patch16_224.mae",
                               "patch-token average", 768, (("global_pool", "avg"),)),
    "random_resnet50": ZooEntry("torchvision:resnet50", "ResNet-50, random init (seed 0)", "random",
                                "global avg-pool", 2048),
    "random_vitb16": ZooEntry("torchvision:vit_b_16", "ViT-B/16, random init (seed 0)", "random", "CLS token", 768),
}

# Parameter-name prefixes that training code wraps a backbone in, and training-only parts a checkpoint carries.
WRAPPER_PREFIXES = ("module.base_encoder.", "module.encoder_q.", "module.backbone.", "module.encoder.", "module.",
                    "base_encoder.", "backbone.", "encoder.", "model.", "teacher.", "student.")


def _url_cache_path(url: str) -> Path:
    """Where `url` is cached: `checkpoints/gpuclust/<sha256 of the whole URL, 16 hex>/<file name>`. The file name
    alone is not an identity (VICReg's and Barlow Twins' checkpoints are both `resnet50.pth`)."""
    import torch.hub

    name = Path(urlsplit(url).path).name or "weights"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(torch.hub.get_dir()) / "checkpoints" / "gpuclust" / digest / name


def hash_prefix(url: str) -> str | None:
    """The publisher's SHA-256 prefix in the file name (torchvision's `resnet50-11ad3fa6.pth`), as torch.hub reads
    it; None when the URL carries none."""
    import torch.hub

    m = re.search(torch.hub.HASH_REGEX, Path(urlsplit(url).path).name)
    return m.group(1) if m and len(m.group(1)) >= 8 else None


def _adopt(src: Path, dest: Path) -> None:
    """Put a verified file from torch.hub's own cache at `dest` (a hard link where the file system allows)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def download(url: str) -> Path:
    """The weights file at `url`, from the cache or downloaded into it (the one place that downloads). A file whose
    name carries the publisher's hash prefix is checked against it; torch.hub's own copy (`checkpoints/<name>`,
    where torchvision caches its weights) is reused once it passes that check."""
    torch = require("torch", "pretrained encoders", "pip install torch torchvision timm")
    dest, want = _url_cache_path(url), hash_prefix(url)
    if dest.is_file():
        return dest
    theirs = Path(torch.hub.get_dir()) / "checkpoints" / dest.name
    if want and theirs.is_file() and sha256_file(theirs).startswith(want):
        _adopt(theirs, dest)
        return dest
    if offline():
        raise UserError(f"offline and {url} is not in the hub cache: download it and pass --weights PATH")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    log.info("downloading %s", url)
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as exc:  # urllib raises many types for network failures
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not download {url} ({exception_line(exc)}); offline, pass "
                        "--weights PATH") from None
    got = sha256_file(tmp) if want else None
    if want and not got.startswith(want):
        tmp.unlink(missing_ok=True)
        raise UserError(f"{url}: the downloaded file's SHA-256 starts {got[:len(want)]}, the publisher's name says "
                        f"{want}; it was not kept (retry, or pass --weights PATH)")
    os.replace(tmp, dest)  # a killed download never leaves a partial file under the final name
    return dest


def build_arch(arch: str, seed: int | None = None, **timm_kwargs):
    """An architecture without weights: `torchvision:NAME` or `timm:NAME` (seeded when `seed` is given)."""
    import torch

    kind, _, name = arch.partition(":")
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "torchvision":
        import torchvision.models as tvm

        if name not in tvm.list_models():
            raise UserError(f"torchvision has no model {name!r} (torchvision.models.list_models() lists them)")
        return tvm.get_model(name, weights=None)
    if kind == "timm":
        timm = require("timm", "timm encoders", "pip install timm")
        if not timm.is_model(name):
            raise UserError(f"timm has no model {name!r} (timm.list_models() lists them)")
        return timm.create_model(name, pretrained=False, **timm_kwargs)
    raise UserError(f"--arch {arch!r}: use torchvision:NAME or timm:NAME, e.g. torchvision:resnet50")


def drop_head(model, arch: str):
    """Remove the classifier so the model returns its pooled features: torchvision's fc/heads/classifier/head become
    identities (the last Linear of a Sequential classifier); timm models reset to num_classes=0."""
    import torch

    if arch.startswith("timm:"):
        model.reset_classifier(0)
        return model
    for attr in ("fc", "heads", "head", "classifier"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, torch.nn.Sequential):
            linear = [i for i, m in enumerate(head) if isinstance(m, torch.nn.Linear)]
            if linear:
                head[linear[-1]] = torch.nn.Identity()
                # A dropout right before the removed layer is harmless in eval mode; keep the rest (e.g. pooling).
                return model
        setattr(model, attr, torch.nn.Identity())
        return model
    raise UserError("cannot find the classifier to remove (no fc, heads, head or classifier attribute)")


def load_into(model, state_dict: dict, source: str, head_ok: bool = True) -> None:
    """Load a checkpoint from another codebase into `model`: find the wrapper prefix under which most of the model's
    parameters appear, strip it, ignore the training-only rest (projection heads, prototypes, predictors, the
    classifier). Every parameter of the model must be found with its shape, else a one-line error says which."""
    want = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    best, best_n = "", -1
    for prefix in ("", *WRAPPER_PREFIXES):
        n = sum(1 for k in state_dict if k.startswith(prefix) and k[len(prefix):] in want)
        if n > best_n:
            best, best_n = prefix, n
    sd = {k[len(best):]: v for k, v in state_dict.items() if k.startswith(best) and k[len(best):] in want}
    missing = [k for k in want if k not in sd]
    head_names = ("fc.", "head.", "heads.", "classifier.")
    if head_ok:  # the classifier is removed after loading, so a headless checkpoint is fine
        missing = [k for k in missing if not k.startswith(head_names)]
    if missing:
        raise UserError(f"{source}: the checkpoint lacks {len(missing)} of the architecture's tensors, e.g. "
                        f"{missing[0]!r} (wrong --arch?)")
    bad = [k for k, v in sd.items() if tuple(v.shape) != tuple(want[k])]
    if bad:
        raise UserError(f"{source}: tensor {bad[0]!r} has shape {tuple(sd[bad[0]].shape)}, the architecture expects "
                        f"{tuple(want[bad[0]])} (wrong --arch?)")
    model.load_state_dict(sd, strict=False)


def _transform(model, arch: str, entry_source: str, input_size: int | None):
    """(transform, preprocessing record): the evaluation transform that belongs to the weights."""
    if arch.startswith("timm:"):
        transform, cfg = timm_transform(model, input_size)
    elif entry_source.startswith("torchvision:"):
        import torchvision.models as tvm

        enum = tvm.get_model_weights(arch.partition(":")[2])[entry_source.partition(":")[2]]
        transform, cfg = torchvision_transform(enum)
    else:  # publisher checkpoints and random weights: the standard ImageNet evaluation transform
        cfg = {"input_size": [3, 224, 224], "resize_size": [256], "crop_size": [224], "interpolation": "bilinear",
               **IMAGENET}
        transform = imagenet_style_transform(cfg)
    return transform, cfg


def build_zoo(name: str, weights: str | None = None) -> Encoder:
    """A ready Encoder for a zoo name; `weights` a local file in place of the download."""
    e = ZOO[name]
    kwargs = dict(e.timm_kwargs)
    if e.source == "random":
        if weights is not None:
            raise UserError(f"{name} is randomly initialised; drop --weights (or use checkpoint:PATH --arch ...)")
        model, ident = build_arch(e.arch, seed=0, **kwargs), "random-seed0"
    elif e.source.startswith("timm:") and weights is None:
        timm = require("timm", "timm encoders", "pip install timm")
        model = hub_create(timm, e.source[5:], name, offline(), **kwargs)
        ident = f"hub:{e.source[5:]}"
    else:
        model = build_arch(e.arch, **kwargs)
        if weights is not None:
            path = Path(weights).expanduser()
        elif e.source.startswith("torchvision:"):
            import torchvision.models as tvm

            enum = tvm.get_model_weights(e.arch.partition(":")[2])[e.source.partition(":")[2]]
            path = download(enum.url)
        else:
            path = download(e.source[4:])
        load_into(model, load_state_dict(path), name, head_ok=not e.keep_head)
        ident = file_identity(path)
    if not e.keep_head:
        model = drop_head(model, e.arch)
    input_size = dict(e.timm_kwargs).get("img_size")
    transform, cfg = _transform(model, e.arch, e.source, input_size)
    return finish_encoder(name, model, transform, cfg, ident)


def build_checkpoint(path: str, weights: str | None = None, arch: str | None = None) -> Encoder:
    """`checkpoint:PATH --arch A`: any checkpoint whose backbone fits a torchvision or timm architecture."""
    if weights is not None:
        raise UserError("checkpoint:PATH is the weights file; drop --weights")
    if not path:
        raise UserError("checkpoint:PATH needs a file, e.g. checkpoint:~/ckpt/r50.pth --arch torchvision:resnet50")
    if not arch:
        raise UserError("checkpoint:PATH needs --arch, e.g. --arch torchvision:resnet50 (or timm:NAME)")
    model = build_arch(arch)
    load_into(model, load_state_dict(path), f"checkpoint:{path}")
    model = drop_head(model, arch)
    transform, cfg = _transform(model, arch, "checkpoint", None)
    ident = file_identity(Path(path).expanduser())
    return finish_encoder(f"checkpoint:{Path(path).name}", model, transform, cfg, ident)


def build_torchvision(name: str, weights: str | None = None, _arch: str | None = None) -> Encoder:
    """`torchvision:NAME`: a torchvision classification model with its DEFAULT weights, headless. (`--arch` does
    not apply: the registry refuses it before this runs.)"""
    import torchvision.models as tvm

    if not name:
        raise UserError("torchvision:NAME needs a model name, e.g. torchvision:convnext_tiny")
    if name not in tvm.list_models(module=tvm):
        raise UserError(f"torchvision:{name}: not a torchvision classification model "
                        "(torchvision.models.list_models(torchvision.models) lists them)")
    model = build_arch(f"torchvision:{name}")
    enum = tvm.get_model_weights(name).DEFAULT
    path = Path(weights).expanduser() if weights else download(enum.url)
    load_into(model, load_state_dict(path), f"torchvision:{name}")
    model = drop_head(model, f"torchvision:{name}")
    transform, cfg = _transform(model, f"torchvision:{name}", f"torchvision:{enum.name}", None)
    return finish_encoder(f"torchvision:{name}", model, transform, cfg, file_identity(path))


def _register() -> None:
    """One registry entry per zoo name (built by build_zoo), and the torchvision: and checkpoint: prefixes."""
    for name, entry in ZOO.items():
        register_encoder(name, help=entry.help)(functools.partial(build_zoo, name))
    register_prefix("torchvision", build_torchvision,
                    "any torchvision classification model with its DEFAULT weights, headless")
    register_prefix("checkpoint", build_checkpoint,
                    "a local checkpoint loaded into --arch torchvision:NAME or timm:NAME", placeholder="PATH",
                    takes_arch=True)


_register()
