"""`Encoder`: a frozen torch module that maps a batch of transformed images to (B, dim) features, its transform, and
the key that identifies its numbers in the embedding store. Built by the registry's builders, or by a user from any
`torch.nn.Module` and a transform: `Encoder(my_module, transform=my_transform)`."""
from __future__ import annotations

from typing import Any, Callable

from ..errors import UserError
from .weights import module_identity, torch_module

BLANK_SIZE = 224  # the blank image a user module's output size is measured on (its transform may resize it)


class Encoder:
    """A ready encoder: `model` (a torch module in eval mode returning (B, dim)), `transform` (PIL image -> float
    tensor), `dim`, `name`, and `key`, everything that changes its numbers (for the embedding store).

    From a module of your own: `Encoder(module, transform=t)` puts the module in eval mode, measures `dim` with one
    forward pass of a transformed blank image when not given, and keys the store by a SHA-256 over the module's
    class and state dict (names, dtypes, shapes, bytes) and `repr(transform)`, so two different modules never share
    stored embeddings. Give the transform a repr that names its settings (torchvision's do): a repr that carries an
    object address (a lambda) is only reused within one process.

    The builders pass `key` themselves; the older positional order `Encoder(name, model, transform, dim, key)` is
    still accepted (a string first means a name)."""

    def __init__(self, model: Any, transform: Callable | None = None, name: str | None = None,
                 dim: int | None = None, key: dict | None = None):
        if isinstance(model, str):  # Encoder(name, model, transform, dim, key): the order before user modules
            model, transform, name = transform, name, model
        self.model, self.transform = model, transform
        if key is None:
            name, dim, key = _user_module(model, transform, name, dim)
        self.name = name or key.get("encoder") or type(model).__name__
        self.dim, self.key = int(dim) if dim is not None else _measure_dim(model, transform), dict(key)

    def __repr__(self) -> str:
        return f"Encoder(name={self.name!r}, dim={self.dim}, model={type(self.model).__name__})"


def _user_module(model, transform, name: str | None, dim: int | None) -> tuple[str, int, dict]:
    """(name, dim, key) for a user's module: eval mode, dim measured when not given, the key from its weights."""
    torch = torch_module()
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"Encoder: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(transform):
        raise UserError("Encoder: a module needs transform=, a callable from a PIL image to a (3, H, W) tensor")
    model.eval()
    name = name or f"module:{type(model).__name__}"
    dim = int(dim) if dim is not None else _measure_dim(model, transform)
    key = {"encoder": name, "weights": f"sha256:{module_identity(model)}", "transform": repr(transform)}
    return name, dim, key


def _measure_dim(model, transform) -> int:
    """The feature size: one forward pass (no grad) of a transformed blank image; the output must be (1, D)."""
    from PIL import Image

    torch = torch_module()
    if transform is None:
        raise UserError("Encoder: dim is unknown and there is no transform to measure it with; pass dim=")
    x = transform(Image.new("RGB", (BLANK_SIZE, BLANK_SIZE)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        out = model(x.unsqueeze(0).to(device))
    if not hasattr(out, "shape") or out.ndim != 2:
        shape = tuple(getattr(out, "shape", ())) or type(out).__name__
        raise UserError(f"Encoder: the module must return (batch, features); it returned {shape} for one image")
    return int(out.shape[-1])


def finish_encoder(name: str, model, transform, preprocess: dict, weights: str) -> Encoder:
    """A builder's last step: the model frozen in eval mode, its dim measured on a zero batch of the preprocessing's
    input size, and the store key {encoder, weights, preprocess} (unchanged since the first stored embeddings)."""
    torch = torch_module()
    model.eval().requires_grad_(False)
    size = preprocess.get("input_size", [3, 224, 224])
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, *size)).shape[-1])
    return Encoder(model, transform, name=name, dim=dim,
                   key={"encoder": name, "weights": weights, "preprocess": preprocess})
