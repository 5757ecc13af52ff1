"""One registry for every encoder, in timm's idiom: builders register a short name with `@register_encoder` (the
packaged encoders, the study's zoo, your own), families that take an argument register a prefix
(`timm:NAME`, `torchvision:NAME`, `checkpoint:PATH`), and `create_encoder` turns a name, a prefixed spec, a ready
`Encoder` or a `torch.nn.Module` into an `Encoder`. `list_encoders("*dino*")` lists names like `timm.list_models`.

This module imports no builder: the builders' modules import it and register themselves, and the package
(`gpuclust.encode`) imports them, so every name is registered once anything under `gpuclust.encode` is imported.
"""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import UserError
from .encoder import Encoder
from .transforms import study_preprocess

PREPROCESS = ("default", "study")


@dataclass(frozen=True)
class EncoderEntry:
    """A registered name: `build(weights)` returns the Encoder; `help` is its line in `--list encoders`."""

    build: Callable[..., Encoder]
    help: str


@dataclass(frozen=True)
class PrefixEntry:
    """A registered prefix: `build(rest, weights, arch)` returns the Encoder for `prefix:rest`; `placeholder` names
    what follows the colon (NAME, PATH); `takes_arch` whether `--arch` applies."""

    build: Callable[[str, str | None, str | None], Encoder]
    help: str
    placeholder: str = "NAME"
    takes_arch: bool = False


ENCODERS: dict[str, EncoderEntry] = {}  # every short name, in the order registered
PREFIX_ENTRIES: dict[str, PrefixEntry] = {}
PREFIXES: dict[str, str] = {}  # prefix -> "prefix:NAME - help", the form run.py's listing reads


def register_encoder(name: str | Callable | None = None, help: str | None = None) -> Callable:
    """Decorator registering `fn(weights=None, **kw) -> Encoder` under `name` (default: the function's name), with
    `help` (default: the first line of its docstring). Usable bare (`@register_encoder`) or called. Registering a
    name again replaces it, with a warning."""
    if callable(name):  # used bare: @register_encoder
        return register_encoder()(name)

    def add(fn: Callable) -> Callable:
        key = name or fn.__name__
        if ":" in key:
            raise ValueError(f"encoder name {key!r}: a colon marks a prefix (register_prefix)")
        if key in ENCODERS:
            warnings.warn(f"register_encoder: replacing the encoder {key!r}", stacklevel=3)
        ENCODERS[key] = EncoderEntry(fn, help or _first_line(fn.__doc__) or key)
        return fn

    return add


def register_prefix(prefix: str, builder: Callable[[str, str | None, str | None], Encoder], help: str,
                    placeholder: str = "NAME", takes_arch: bool = False) -> None:
    """Register `prefix:REST` specs: `builder(rest, weights, arch)` returns the Encoder. `placeholder` names REST in
    listings and messages (`checkpoint:PATH`); `takes_arch` says whether `--arch` applies to it."""
    PREFIX_ENTRIES[prefix] = PrefixEntry(builder, help, placeholder, takes_arch)
    PREFIXES[prefix] = f"{prefix}:{placeholder} - {help}"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()


def list_encoders(pattern: str | Sequence[str] | None = None) -> list[str]:
    """The registered names, sorted, matching `pattern` (a shell-style pattern such as '*dino*', or several; case
    does not matter). Prefixed families (timm:NAME, ...) are not listed: `encoder_help()` shows them."""
    names = sorted(ENCODERS)
    if pattern is None:
        return names
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [n for n in names if any(fnmatch.fnmatchcase(n.lower(), p.lower()) for p in patterns)]


def is_encoder(name: str) -> bool:
    """Whether `name` is a registered name or uses a registered prefix (the part after the colon is checked when the
    encoder is created)."""
    if not isinstance(name, str):
        return False
    prefix, sep, _ = name.partition(":")
    return (bool(sep) and prefix in PREFIX_ENTRIES) or (not sep and name in ENCODERS)


def encoder_help() -> list[tuple[str, str]]:
    """(name, help) rows for `--list encoders`: every registered name, then each prefix as `prefix:NAME`."""
    rows = [(n, e.help) for n, e in ENCODERS.items()]
    return rows + [(f"{p}:{e.placeholder}", e.help) for p, e in PREFIX_ENTRIES.items()]


def check_encoder_spec(spec: Any) -> None:
    """Fail fast on a name that cannot resolve, before any data is read. Ready objects (an Encoder, a module) pass."""
    if not isinstance(spec, str) or is_encoder(spec):
        return
    known = ", ".join([*ENCODERS, *(f"{p}:{e.placeholder}" for p, e in PREFIX_ENTRIES.items())])
    raise UserError(f"unknown encoder {spec!r}; known: {known} (see --list encoders)")


def create_encoder(name: Any, weights: str | None = None, arch: str | None = None, preprocess: str = "default",
                   native_size: int | None = None, transform: Callable | None = None) -> Encoder:
    """The Encoder that `name` gives: a registered name, `prefix:REST`, a ready `Encoder` (returned as it is), or a
    `torch.nn.Module` (wrapped with `transform`, see `Encoder`). `weights` is a local file in place of the
    default weights; `arch` the architecture a `checkpoint:PATH` is loaded into. `preprocess="study"` swaps in the
    study's transform; `native_size` is the dataset's image size, which the study's raw-pixel baseline keeps below
    32 px."""
    if preprocess not in PREPROCESS:
        raise UserError(f"--preprocess {preprocess!r}: default or study")
    if isinstance(name, str):
        check_encoder_spec(name)
        enc = _from_spec(name, weights, arch)
    else:
        enc = _from_object(name, weights, arch, transform)
    return study_preprocess(enc, native_size) if preprocess == "study" else enc


def _from_spec(spec: str, weights: str | None, arch: str | None) -> Encoder:
    prefix, sep, rest = spec.partition(":")
    entry = PREFIX_ENTRIES.get(prefix) if sep else None
    if arch is not None and not (entry and entry.takes_arch):
        where = ", ".join(f"{p}:{e.placeholder}" for p, e in PREFIX_ENTRIES.items() if e.takes_arch)
        raise UserError(f"--arch applies to {where} only")
    enc = entry.build(rest, weights, arch) if entry is not None else ENCODERS[spec].build(weights)
    if not isinstance(enc, Encoder):  # a user's builder that forgot its return
        raise UserError(f"encoder {spec!r}: its builder returned {type(enc).__name__}, not a gpuclust.Encoder")
    return enc


def _from_object(obj: Any, weights: str | None, arch: str | None, transform: Callable | None) -> Encoder:
    """A ready Encoder as it is, or a module wrapped as one; weights and arch belong to names."""
    if weights is not None or arch is not None:
        raise UserError("weights and arch apply to encoder names; a ready encoder or module carries its own")
    if isinstance(obj, Encoder):
        if transform is not None:
            raise UserError("transform= applies to a torch module; this Encoder has its own")
        return obj
    return Encoder(obj, transform=transform)


def build_encoder(spec: Any, weights: str | None = None, arch: str | None = None, preprocess: str = "default",
                  native_size: int | None = None) -> Encoder:
    """The name the pipeline and older callers use for `create_encoder` (same arguments, same result)."""
    return create_encoder(spec, weights, arch, preprocess, native_size)
