"""csv:/parquet: file lists of real images: headers, relative paths, a declared root that paths may not leave."""
import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, ReduceConfig, RunConfig
from gpuclust.data import SkipImage, load_dataset
from gpuclust.errors import UserError
from gpuclust.pipeline import run_pipeline
from helpers import write_digit_images


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "data"
    write_digit_images(root, n_per_class=6, classes=(0, 7))
    rel = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    return root, rel


def _write_csv(path, rows, header=True):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["path", "label"])
        w.writerows(rows)


def test_csv_with_and_without_header(images, tmp_path):
    root, rel = images
    rows = [(r, r.split("/")[0]) for r in rel]
    _write_csv(root / "list.csv", rows)
    ds = load_dataset(f"csv:{root / 'list.csv'}")  # relative to the list's folder
    assert len(ds) == 12 and ds.classes == ["class_0", "class_7"] and ds.load(0).mode == "RGB"
    _write_csv(root / "bare.csv", [(r,) for r in rel], header=False)
    bare = load_dataset(f"csv:{root / 'bare.csv'}")
    assert bare.labels is None and bare.paths == ds.paths


def test_parquet_list_and_missing_column(images):
    root, rel = images
    pq.write_table(pa.table({"path": rel, "label": [r.split("/")[0] for r in rel]}), root / "l.parquet")
    ds = load_dataset(f"parquet:{root / 'l.parquet'}")
    assert len(ds) == 12 and np.bincount(ds.labels).tolist() == [6, 6]
    pq.write_table(pa.table({"file": rel}), root / "nopath.parquet")
    with pytest.raises(UserError, match="no `path` column"):
        load_dataset(f"parquet:{root / 'nopath.parquet'}")


def test_paths_cannot_leave_a_declared_root(images, tmp_path):
    root, rel = images
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / rel[0]).read_bytes())
    _write_csv(tmp_path / "list.csv", [(rel[0], "a"), ("../secret.png", "a"), (str(secret), "b"), ("", "a"),
                                       (rel[1], "")])
    ds = load_dataset(f"csv:{tmp_path / 'list.csv'}", root=str(root))
    assert ds.load(0).mode == "RGB"
    for i, reason in [(1, "outside the declared root"), (2, "outside the declared root"), (3, "no path"),
                      (4, "no label")]:
        with pytest.raises(SkipImage, match=reason):
            ds.load(i)
    # Without a declared root the list is the user's own: the absolute path is read.
    assert load_dataset(f"csv:{tmp_path / 'list.csv'}").load(2).mode == "RGB"


def test_bad_lists_are_user_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        load_dataset(f"csv:{tmp_path / 'empty.csv'}")
    with pytest.raises(UserError, match="no such file"):
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="cannot read"):
        load_dataset(f"parquet:{tmp_path / 'x.parquet'}")


def test_csv_that_is_not_utf8_text_is_a_user_error(images):
    root, rel = images
    rows = "path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel) + "caf\xe9.png,class_0\n"
    (root / "latin1.csv").write_bytes(rows.encode("latin-1"))  # a list saved by a tool that does not write UTF-8
    with pytest.raises(UserError, match=r"cannot read it \(not UTF-8 text: byte 0xe9\); save the list as UTF-8$"):
        load_dataset(f"csv:{root / 'latin1.csv'}")
    pq.write_table(pa.table({"path": rel, "label": [r.split("/")[0] for r in rel]}), root / "list.parquet")
    with pytest.raises(UserError, match="not UTF-8 text.*use parquet:PATH"):
        load_dataset(f"csv:{root / 'list.parquet'}")
    (root / "utf8.csv").write_bytes(rows.encode("utf-8"))  # the same list in UTF-8 reads, its missing file skipped
    with pytest.raises(SkipImage):
        load_dataset(f"csv:{root / 'utf8.csv'}").load(12)


def test_csv_run_skips_and_lists_bad_rows(images, tmp_path):
    root, rel = images
    _write_csv(root / "list.csv", [(r, r.split("/")[0]) for r in rel] + [("../../etc/passwd", "class_0")])
    cfg = RunConfig(data=DataConfig(f"csv:{root / 'list.csv'}", root=str(root)),
                    encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "c")), reduce=ReduceConfig("pca", 5),
                    cluster=ClusterConfig("kmeans"), device="cpu", output=str(tmp_path / "run"))
    r = run_pipeline(cfg, progress=False)
    assert r.n_skipped == 1 and r.metrics["n_rows"] == 12 and r.metrics["ami"] > 0.8
    assert "outside the declared root" in (r.output / "skipped.csv").read_text()
