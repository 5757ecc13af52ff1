"""A folder with undecodable files among real images: the bad ones are skipped, counted and listed, the rest run."""
import csv
import json

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, ReduceConfig, RunConfig
from gpuclust.pipeline import run_pipeline
from helpers import write_digit_images


def test_bad_images_are_skipped_and_listed(tmp_path):
    root = tmp_path / "imgs"
    truth = write_digit_images(root, n_per_class=15, classes=(0, 1, 7))
    good = (root / "class_0" / "000.png").read_bytes()
    (root / "class_0" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "class_1" / "empty.jpg").write_bytes(b"")
    (root / "class_7" / "notes.jpg").write_text("this is not an image")
    cfg = RunConfig(data=DataConfig(f"imagefolder:{root}"),
                    encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "c")), reduce=ReduceConfig("pca", 10),
                    cluster=ClusterConfig("kmeans"), device="cpu", output=str(tmp_path / "run"))
    result = run_pipeline(cfg, progress=False)
    assert result.n_skipped == 3 and result.metrics["n_rows"] == len(truth)
    with open(result.output / "skipped.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == ["empty.jpg", "notes.jpg", "truncated.png"]
    assert all(r["reason"] for r in rows)
    assert json.loads((result.output / "metrics.json").read_text())["n_skipped"] == 3
    # 8x8 digits 0, 1, 7 from pixels separate well: a pipeline that mixed up rows and labels would not.
    assert result.metrics["ami"] > 0.7


def test_unlabelled_folder_has_label_free_metrics_only(tmp_path):
    root = tmp_path / "imgs"
    write_digit_images(root, n_per_class=15, classes=(0, 1))
    cfg = RunConfig(data=DataConfig(f"folder:{root}"), encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "c")),
                    reduce=ReduceConfig("none"), cluster=ClusterConfig("kmeans", k=2), device="cpu",
                    output=str(tmp_path / "run"))
    m = run_pipeline(cfg, progress=False).metrics
    assert "ami" not in m and "nmi" not in m
    assert m["n_clusters"] == 2 and m["silhouette"] > 0 and m["silhouette_umap"] is not None
