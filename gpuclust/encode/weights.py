"""Weights files and their identities: reading a state dict the user chose, loading it by position, and the hashes
that tell the embedding store which weights made its numbers. Shared by the packaged encoders and the zoo."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserError, require

TORCH_INSTALL = "pip install torch torchvision timm"


def torch_module():
    """torch, or a one-line error with the install command."""
    return require("torch", "image encoders", TORCH_INSTALL)


def timm_module():
    """timm, or a one-line error with the install command."""
    return require("timm", "image encoders", TORCH_INSTALL)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_IDENTITIES: dict[tuple, str] = {}


def file_identity(path: str | Path) -> str:
    """A weights file's identity for the embedding store: the SHA-256 of all of its bytes (16 hex digits), worked out
    once per process for each (real path, size, modification time). Part of a file is not enough: two checkpoints
    can share their first and last MiB (a fine-tune that changed only middle layers)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _IDENTITIES:
        _IDENTITIES[memo] = sha256_file(p)[:16]
    return _IDENTITIES[memo]


def module_identity(module) -> str:
    """A torch module's identity for the embedding store: the SHA-256 (16 hex digits) over its class and, for each
    state-dict entry in order, the name, dtype, shape and bytes. Two modules that differ in any weight or buffer get
    different identities; the same weights get the same one in every process."""
    torch = torch_module()
    cls = type(module)
    h = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}".encode())
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):  # extra state a module may keep: its repr is all there is
            h.update(f"{name}|{value!r}".encode())
            continue
        t = value.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # A byte view works for every dtype, bfloat16 included (numpy has none of its own).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_state_dict(path: str | Path) -> dict:
    """Weights from a file the user chose: safetensors, or a torch file read with weights_only=True (no unpickling
    of arbitrary objects). Common wrappers (`state_dict`, `model`) and `module.` prefixes are unwrapped."""
    torch = torch_module()
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
