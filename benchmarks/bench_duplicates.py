"""Near-duplicates (gpuclust.find_duplicates, --duplicates): quality on altered copies of real images, and speed.

Quality (`--quality`): originals from packaged real images (scikit-learn's two sample photos cut into 80-pixel tiles
that do not overlap, Fashion-MNIST, digits; all enlarged to 224 x 224), each with five altered copies (JPEG at quality 30, resized to half, 6%
cropped off two sides, brightness x1.4, mirrored). Encoded with each --encoders, then grouped at each threshold:
recall of the copies per alteration (a copy counts when it lands in its original's group), precision of the grouped
pairs (both rows from one original), and how many distinct originals were grouped with another. nprobe: the IVF
path's recall of the pairs at >= 0.9 against exact search on these real embeddings.

Speed (`--speed`): synthetic 768-d rows (1,000 clusters, 2% of the rows with 1-3 planted copies at cosine ~0.9-0.99)
written to an .npy and streamed (RowChunks), each measurement in a fresh process with its peak RSS: gpuclust's search
(IVF above 20,000 rows), exact all-pairs blocks on a sample of queries (time extrapolated to all rows), and the peer
imagededup (its CNN method's search on the same embeddings, from its own venv) where its n x n matrix fits.

    python benchmarks/bench_duplicates.py --quality                           # ~6 minutes on 2 cores
    python benchmarks/bench_duplicates.py --speed --sizes 100000 1000000 --peer /tmp/peer-venv/bin/python
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's gpuclust, when run as benchmarks/bench_duplicates.py
ALTERATIONS = ("jpeg", "resize", "crop", "brightness", "flip")
THRESHOLDS = (0.80, 0.83, 0.85, 0.87, 0.88, 0.90, 0.92, 0.94, 0.97)


# ---------------------------------------------------------------------------------------------- the image set
def photo_tiles(size: int = 80, out: int = 224) -> list:
    """Tiles of scikit-learn's sample photos (china, flower) that do not overlap, distinct images of one scene,
    each enlarged to out x out (a collection's photos are larger than the encoder's input, so an alteration's
    artefacts are measured at the size they have in one)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    tiles = []
    for photo in load_sample_images().images:
        h, w = photo.shape[:2]
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                tiles.append(Image.fromarray(photo[y:y + size, x:x + size]).resize((out, out), Image.BICUBIC))
    return tiles


def packaged(name: str, n: int, seed: int = 0, size: int = 224) -> list:
    """n images of a packaged set (fashion-mnist, digits), drawn with a seed, upscaled to size x size RGB."""
    import gpuclust as gc
    from PIL import Image

    ds = gc.load_dataset(name)
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False))
    return [ds.load(int(r)).convert("RGB").resize((size, size), Image.BICUBIC) for r in rows]


def alter(img, how: str):
    """One altered copy of a PIL image."""
    import io

    from PIL import Image, ImageEnhance, ImageOps

    img = img.convert("RGB")
    w, h = img.size
    if how == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if how == "resize":
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR)
    if how == "crop":
        return img.crop((int(0.06 * w), int(0.06 * h), w, h))
    if how == "brightness":
        return ImageEnhance.Brightness(img).enhance(1.4)
    if how == "flip":
        return ImageOps.mirror(img)
    raise ValueError(how)


def altered_set(sets: dict, alterations=ALTERATIONS) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(images, source id, set name, alteration) for the originals of each set (name -> images) followed by their
    altered copies; originals come first, so with no clusters each group keeps its original."""
    originals, names = [], []
    for name, imgs in sets.items():
        originals += imgs
        names += [name] * len(imgs)
    images, source, alteration = list(originals), list(range(len(originals))), ["original"] * len(originals)
    for how in alterations:
        images += [alter(im, how) for im in originals]
        source += list(range(len(originals)))
        alteration += [how] * len(originals)
    source = np.array(source)
    return images, source, np.array(names)[source], np.array(alteration)


def encode(images: list, encoder: str, batch: int = 64) -> np.ndarray:
    """The encoder's embeddings of PIL images (CPU, fp32)."""
    import torch

    import gpuclust as gc

    enc = gc.create_encoder(encoder)
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            x = torch.stack([enc.transform(im.convert("RGB")) for im in images[s:s + batch]])
            out.append(enc.model(x).float().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------- quality
def group_of(X: np.ndarray, threshold: float) -> np.ndarray:
    """Each row's duplicate group (-1 for none) by gpuclust.find_duplicates on the CPU."""
    import gpuclust as gc

    frame = gc.find_duplicates(X, threshold, device="cpu")
    group = np.full(len(X), -1)
    group[frame.row.to_numpy()] = frame.group.to_numpy()
    return group


def scores(group: np.ndarray, source: np.ndarray, alteration: np.ndarray) -> dict:
    """Recall per alteration, pair precision, and distinct originals grouped with another original."""
    orig = np.flatnonzero(alteration == "original")
    orig_group = group[orig][source]  # the group of each row's original (originals are rows 0..k-1)
    out = {}
    for how in ALTERATIONS:
        rows = np.flatnonzero(alteration == how)
        out[f"recall_{how}"] = float(np.mean((group[rows] >= 0) & (group[rows] == orig_group[rows])))
    copies = alteration != "original"
    out["recall_all"] = float(np.mean((group[copies] >= 0) & (group[copies] == orig_group[copies])))
    true = false = 0
    merged = set()
    for g in np.unique(group[group >= 0]):
        members = np.flatnonzero(group == g)
        src = source[members]
        same = (src[:, None] == src[None, :])[np.triu_indices(len(src), 1)]
        true, false = true + int(same.sum()), false + int((~same).sum())
        if len(set(src)) > 1:
            merged |= set(src.tolist())
    out["pair_precision"] = true / max(true + false, 1)
    out["false_pairs"] = false
    out["originals_merged"] = len(merged)
    out["groups"] = int(len(np.unique(group[group >= 0])))
    return out


def quality(encoders: list, per_set: int, out_csv: Path, tmp: Path) -> list[dict]:
    """Quality rows for each encoder, set and threshold; also the IVF nprobe recall on the same embeddings."""
    sets = {"photo-tiles": photo_tiles(), "fashion-mnist": packaged("fashion-mnist", per_set),
            "digits": packaged("digits", per_set // 2)}
    images, source, setname, alteration = altered_set(sets)
    print(f"{len(images)} images: {len(source[alteration == 'original'])} originals x (1 + {len(ALTERATIONS)})")
    rows = []
    for encoder in encoders:
        cached = tmp / f"bench-duplicates-{encoder}-{len(images)}.npy"  # a rerun reuses the embeddings
        t = time.perf_counter()
        X = np.load(cached) if cached.is_file() else encode(images, encoder)
        np.save(cached, X)
        print(f"{encoder}: encoded in {time.perf_counter() - t:.0f}s", flush=True)
        for thr in THRESHOLDS:
            group = group_of(X, thr)
            for name in ["all", *sets]:
                keep = np.ones(len(X), bool) if name == "all" else setname == name
                sub = _renumber(keep, source)
                rows.append({"encoder": encoder, "set": name, "threshold": thr,
                             **scores(group[keep], sub, alteration[keep])})
        rows += nprobe_rows(X, encoder)
    save(out_csv, rows)
    return rows


def _renumber(keep: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Source ids of the kept rows renumbered 0.. in order, so a subset's originals are again rows 0..k-1."""
    _, inverse = np.unique(source[keep], return_inverse=True)
    return inverse


def nprobe_rows(X: np.ndarray, encoder: str, threshold: float = 0.9) -> list[dict]:
    """Recall of the candidate pairs at >= threshold with faiss IVF at several nprobe, against exact search."""
    from gpuclust.backend import cpu_backend
    from gpuclust.curate.duplicates import candidate_pairs
    from gpuclust.curate.neighbours import NeighbourIndex

    b = cpu_backend()
    exact = _pair_set(candidate_pairs(NeighbourIndex(b, X, ivf_min_rows=10**12), threshold, 16))
    rows = []
    for nprobe in (1, 2, 4, 8, 16, 32):
        found = _pair_set(candidate_pairs(NeighbourIndex(b, X, ivf_min_rows=0, nprobe=nprobe), threshold, 16))
        rows.append({"encoder": encoder, "set": f"ivf-nprobe-{nprobe}", "threshold": threshold,
                     "pair_recall_vs_exact": len(found & exact) / max(len(exact), 1)})
    return rows


def _pair_set(pairs) -> set:
    i, j, _ = pairs
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))


# ---------------------------------------------------------------------------------------------- speed
def planted(path: Path, n: int, dim: int = 768, seed: int = 0, chunk: int = 50_000) -> np.ndarray:
    """Write n synthetic rows to an .npy in chunks; returns the planted (copy row, original row) pairs. The last 2%
    of rows are copies of earlier rows (1-3 per original, noise for cosine ~0.90-0.99)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    n_copies = n // 50
    base_n = n - n_copies
    for s in range(0, base_n, chunk):
        m = min(chunk, base_n - s)
        out[s:s + m] = centres[rng.integers(0, 1000, m)] + 1.2 * rng.standard_normal((m, dim), dtype=np.float32)
    originals = rng.choice(base_n, max(1, n_copies // 2), replace=False)
    src = np.sort(originals[rng.integers(0, len(originals), n_copies)])
    for s in range(0, n_copies, chunk):
        o = src[s:s + chunk]
        rows = np.asarray(out[o])
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        noise = rng.standard_normal(rows.shape, dtype=np.float32) * norms / np.sqrt(dim)
        scale = rng.uniform(0.15, 0.45, (len(o), 1)).astype(np.float32)
        out[base_n + s:base_n + s + len(o)] = rows + scale * noise
    out.flush()
    return np.stack([np.arange(base_n, n), src], axis=1)


CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
path, task, arg = sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
t = time.perf_counter()
if task == "ours":
    from gpuclust.backend import cpu_backend
    from gpuclust.curate.duplicates import candidate_pairs, duplicate_groups
    from gpuclust.stream import NpyRows
    X = NpyRows([__import__("pathlib").Path(path)])
    g = duplicate_groups(cpu_backend(), X, 0.9, np.zeros(X.n_rows), nprobe=int(arg))
    np.save(path + ".groups.npy", g.group)
elif task == "exact":
    from gpuclust.stream import NpyRows
    X = NpyRows([__import__("pathlib").Path(path)])
    q = np.sort(np.random.default_rng(1).choice(X.n_rows, int(arg), replace=False))
    Q = X.take(q); Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    pairs = []
    for start, B in X.chunks():
        B = B / np.linalg.norm(B, axis=1, keepdims=True)
        S = Q @ B.T
        i, j = np.nonzero(S >= 0.9)
        keep = q[i] != start + j
        pairs.append(np.stack([q[i][keep], start + j[keep]], 1))
    np.save(path + ".exact.npy", np.concatenate(pairs))
elif task == "peer":
    import torch
    from imagededup.methods import CNN
    from imagededup.utils import CustomModel
    X = np.load(path, mmap_mode="r")
    cnn = CNN(verbose=False, model_config=CustomModel(model=torch.nn.Identity(), transform=lambda x: x, name="given"))
    res = cnn.find_duplicates(encoding_map={str(i): X[i] for i in range(len(X))}, min_similarity_threshold=0.9,
                              num_sim_workers=0)
    out["pairs"] = sum(len(v) for v in res.values()) // 2
out["seconds"] = time.perf_counter() - t
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(json.dumps(out))
"""


def child(python: str, path: Path, task: str, arg: str, timeout: int) -> dict:
    """One measurement in a fresh process (its own peak RSS); {"error": ...} when it fails or runs out of time."""
    try:
        p = subprocess.run([python, "-c", CHILD, str(ROOT), str(path), task, arg], capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout}s"}
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def speed(sizes: list, peer: str | None, peer_max: int, queries: int, nprobes: list, tmp: Path, out_csv: Path):
    """Speed rows per size: ours (per nprobe), exact on a query sample, the peer where it fits."""
    rows = []
    for n in sizes:
        path = tmp / f"planted-{n}.npy"
        truth = planted(path, n)
        exact = child(sys.executable, path, "exact", str(queries), 3600)
        E = np.load(str(path) + ".exact.npy")
        base = {"n": n, "dim": 768, "exact_sample_queries": queries, "exact_sample_s": exact.get("seconds"),
                "exact_all_pairs_s_extrapolated": exact["seconds"] * n / queries if "seconds" in exact else None}
        for nprobe in nprobes:
            ours = child(sys.executable, path, "ours", str(nprobe), 3600)
            g = np.load(str(path) + ".groups.npy")
            same = lambda p: np.mean((g[p[:, 0]] >= 0) & (g[p[:, 0]] == g[p[:, 1]]))  # noqa: E731
            rows.append({**base, "nprobe": nprobe, "ours_s": ours.get("seconds"),
                         "ours_peak_rss_gb": ours.get("peak_rss_gb"), "planted_recall": float(same(truth)),
                         "exact_pairs_in_sample": len(E), "exact_pair_recall": float(same(E)) if len(E) else None,
                         "groups": int(g.max() + 1), "ours_error": ours.get("error")})
            print(rows[-1], flush=True)
        if peer and n <= peer_max:
            p = child(peer, path, "peer", "0", 3600)
            rows[-1].update(peer="imagededup", peer_s=p.get("seconds"), peer_peak_rss_gb=p.get("peak_rss_gb"),
                            peer_pairs=p.get("pairs"), peer_error=p.get("error"))
        for f in tmp.glob(f"planted-{n}.npy*"):
            f.unlink()
    save(out_csv, rows)
    return rows


# ---------------------------------------------------------------------------------------------- bookkeeping
def machine() -> str:
    return f"cpu{os.cpu_count()}-{platform.machine()}"


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "none"


def save(path: Path, rows: list[dict]) -> None:
    """Rows as a CSV (the union of their keys as columns)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"saved {path}")


def print_quality(rows: list[dict]) -> None:
    """The 'all' rows per encoder and threshold, then the nprobe recalls."""
    cols = ["recall_all", *[f"recall_{a}" for a in ALTERATIONS], "pair_precision", "originals_merged"]
    print(f"{'encoder':18} {'set':14} {'t':>5} " + " ".join(f"{c[7:] if c.startswith('recall_') else c:>10}"
                                                            for c in cols))
    for r in rows:
        if "recall_all" in r:
            print(f"{r['encoder']:18} {r['set']:14} {r['threshold']:5.2f} " + " ".join(
                f"{r[c]:10.3f}" if isinstance(r[c], float) else f"{r[c]:10d}" for c in cols))
        else:
            print(f"{r['encoder']:18} {r['set']:14} {r['threshold']:5.2f} pair recall vs exact "
                  f"{r['pair_recall_vs_exact']:.4f}")


def print_speed(rows: list[dict]) -> None:
    """Time, memory, recall and the ratios against exact and the peer."""
    for r in rows:
        ex = r.get("exact_all_pairs_s_extrapolated")
        line = (f"n={r['n']:>9,} nprobe={r['nprobe']:>2}: ours {r['ours_s'] or float('nan'):8.1f}s "
                f"(peak RSS {r['ours_peak_rss_gb'] or float('nan'):.2f} GB), planted recall {r['planted_recall']:.4f}, "
                f"pair recall vs exact {r['exact_pair_recall'] or float('nan'):.4f}; exact all-pairs ~{ex or 0:.0f}s "
                f"(x{(ex or 0) / (r['ours_s'] or 1):.1f})")
        if r.get("peer_s"):
            line += f"; imagededup {r['peer_s']:.1f}s (x{r['peer_s'] / r['ours_s']:.2f}, {r['peer_peak_rss_gb']:.2f} GB)"
        elif r.get("peer_error"):
            line += f"; imagededup failed: {r['peer_error']}"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quality", action="store_true")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "mobilenetv2"])
    p.add_argument("--per-set", type=int, default=300, help="Fashion-MNIST images (digits: half as many)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--nprobes", type=int, nargs="+", default=[16])
    p.add_argument("--queries", type=int, default=2000, help="exact search's query sample")
    p.add_argument("--peer", help="python of a venv with imagededup (its search on the same embeddings)")
    p.add_argument("--peer-max", type=int, default=20_000, help="largest n the peer's n x n matrix is given")
    p.add_argument("--tmp", type=Path, default=Path("/tmp"))
    args = p.parse_args()
    tag = f"{machine()}-numpy{version('numpy')}-faiss{version('faiss-cpu')}"
    if args.quality:
        rows = quality(args.encoders, args.per_set, RESULTS / f"duplicates-quality-{tag}-torch{version('torch')}.csv",
                       args.tmp)
        print_quality(rows)
    if args.speed:
        name = "-".join(str(s) for s in args.sizes)
        rows = speed(args.sizes, args.peer, args.peer_max, args.queries, args.nprobes, args.tmp,
                     RESULTS / f"duplicates-speed-{name}-{tag}-imagededup{_peer_version(args.peer)}.csv")
        print_speed(rows)


def _peer_version(python: str | None) -> str:
    if not python:
        return "none"
    p = subprocess.run([python, "-c", "from importlib import metadata; print(metadata.version('imagededup'))"],
                       capture_output=True, text=True)
    return p.stdout.strip() or "none"


if __name__ == "__main__":
    main()
