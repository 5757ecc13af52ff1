"""The Embedding Atlas export, read back with pyarrow alone (embedding-atlas itself is not installed)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gpuclust.data import load_dataset
from gpuclust.explore.atlas import atlas_command, write_atlas
from gpuclust.explore.data import MapData
from gpuclust.explore.thumbs import ThumbnailCache, sample_rows


def _digits_map(n: int = 300, k: int = 8) -> tuple[MapData, object]:
    """A MapData of the packaged digits: rows 1000.. (not 0..), PCA map, k-means clusters with a few noise rows,
    cosine neighbours and silhouettes from the pixels."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_samples
    from sklearn.neighbors import NearestNeighbors

    full = load_dataset("digits")
    rows = np.arange(1000, 1000 + n)
    X = full.take(rows).images.reshape(n, -1).astype(np.float32) + 1.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    xy = PCA(2, random_state=0).fit_transform(X).astype(np.float32)
    cluster = KMeans(10, n_init=2, random_state=0).fit_predict(X).astype(np.int64)
    sil = silhouette_samples(X, cluster).astype(np.float32)
    cluster[:5] = -1
    sil[:5] = np.nan
    dist, idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(X).kneighbors(X)
    nb, sim = idx[:, 1:].astype(np.int32), (1 - dist[:, 1:]).astype(np.float32)
    nb[7, -2:] = -1  # a row with fewer neighbours than k
    data = MapData(rows=rows, x=xy[:, 0], y=xy[:, 1], cluster=cluster, label_true=full.labels[rows],
                   classes=full.classes, silhouette=sil, neighbours=nb, neighbour_sim=sim,
                   columns={"outlier_score": np.linspace(0, 1, n), "outlier": np.arange(n) % 50 == 0},
                   title="digits test run")
    return data, full


def test_atlas_parquet_layout(tmp_path):
    data, full = _digits_map()
    shown = sample_rows(len(data), 100, seed=0, must=np.array([0, 7]))
    thumbs = ThumbnailCache(tmp_path / "thumbs").ensure(full, data.rows[shown])
    path = write_atlas(tmp_path / "atlas", data, thumbs)
    assert path == tmp_path / "atlas" / "atlas.parquet"
    t = pq.read_table(path)
    assert t.num_rows == len(data)
    assert t.column_names == ["row", "x", "y", "cluster", "class", "silhouette", "outlier_score", "outlier",
                              "neighbors", "image"]
    s = t.schema
    assert s.field("row").type == pa.int64() and s.field("x").type == pa.float32()
    assert s.field("cluster").type == pa.string() and s.field("class").type == pa.string()
    assert s.field("outlier").type == pa.bool_() and s.field("image").type == pa.string()
    want = pa.struct([("ids", pa.list_(pa.int32())), ("distances", pa.list_(pa.float32()))])
    assert s.field("neighbors").type == want
    d = t.to_pydict()
    assert d["row"] == data.rows.tolist() and np.allclose(d["x"], data.x)
    assert d["cluster"][:5] == ["noise"] * 5 and d["cluster"][5] == str(data.cluster[5])
    assert d["class"][10] == full.classes[full.labels[1010]]
    assert d["silhouette"][:5] == [None] * 5 and abs(d["silhouette"][5] - data.silhouette[5]) < 1e-6

    nbs = d["neighbors"]
    assert all(len(v["ids"]) == len(v["distances"]) == 8 for v in nbs)  # equal lengths: Embedding Atlas stacks them
    ids = np.array([v["ids"] for v in nbs])
    assert ids.min() >= 0 and ids.max() < len(data)
    assert ids[7, -2:].tolist() == [7, 7] and nbs[7]["distances"][-2:] == [0.0, 0.0]  # missing slots: the row itself
    assert ids[3].tolist() == data.neighbours[3].tolist()
    assert np.allclose(nbs[3]["distances"], 1 - data.neighbour_sim[3], atol=1e-6)
    assert all(np.all(np.diff(v["distances"][:6]) >= -1e-6) for v in nbs[:20])  # nearest first

    images = d["image"]
    assert sum(v is not None for v in images) == 100
    assert images[0] is not None and images[7] is not None
    assert all((images[i] is not None) == (i in set(shown.tolist())) for i in range(len(data)))
    head, _, b64 = images[7].partition(",")
    assert head == "data:image/webp;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.size == (8, 8)
        want = full.images[1007].astype(float)
        assert np.abs(np.asarray(im.convert("L"), float) - want).mean() < 20  # row 7's own image

    readme = (tmp_path / "atlas" / "README.txt").read_text()
    assert "pip install embedding-atlas" in readme
    assert "embedding-atlas atlas.parquet --x x --y y --neighbors neighbors --image image" in readme
    assert "100 with a thumbnail" in readme


def test_atlas_without_optional_columns(tmp_path):
    data, _ = _digits_map(n=40)
    data.label_true = data.silhouette = data.neighbours = data.neighbour_sim = None
    data.columns = {}
    data.paths = [f"/images/{r}.png" for r in data.rows]
    t = pq.read_table(write_atlas(tmp_path, data))
    assert t.column_names == ["row", "x", "y", "cluster", "path", "image"]
    assert t.column("image").null_count == 40
    assert t.column("path").to_pylist()[1] == "/images/1001.png"
    assert atlas_command(data) == "embedding-atlas atlas.parquet --x x --y y --image image"
