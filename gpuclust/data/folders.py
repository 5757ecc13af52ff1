"""Images in folders: `imagefolder:PATH` (one class per sub-folder) and `folder:PATH` (unlabelled)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import FileDataset, encode_labels, list_images


def _existing_dir(path: str, spec: str) -> Path:
    if not path:
        raise UserError(f"{spec}: give a folder, e.g. imagefolder:~/photos")
    # Absolute (not resolved: a symlinked folder keeps its name), so labels.parquet's paths hold from any directory.
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise UserError(f"{spec}: no such folder {p}")
    if not p.is_dir():
        raise UserError(f"{spec}: {p} is not a folder")
    return p


def image_folder(path: str) -> FileDataset:
    """`imagefolder:PATH`: images under each non-hidden sub-folder, labelled by the sub-folder's name.

    Raises UserError when the folder is missing or its class sub-folders hold no images."""
    spec = f"imagefolder:{path}"
    root = _existing_dir(path, spec)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, names = [], []
    for d in class_dirs:
        for f in list_images(d):
            paths.append(str(f))
            names.append(d.name)
    if not paths:
        raise UserError(f"{spec}: no images in class sub-folders of {root} (expected {root}/<class>/<image>)")
    labels, classes = encode_labels(names)
    return FileDataset(spec=spec, paths=paths, labels=labels, classes=classes, root=str(root),
                       description=f"{len(paths)} images in {len(classes)} class folders")


def plain_folder(path: str) -> FileDataset:
    """`folder:PATH`: every image under the folder, recursively, without labels; UserError when there are none."""
    spec = f"folder:{path}"
    root = _existing_dir(path, spec)
    paths = [str(f) for f in list_images(root)]
    if not paths:
        raise UserError(f"{spec}: no images under {root}")
    return FileDataset(spec=spec, paths=paths, root=str(root), description=f"{len(paths)} unlabelled images")
