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


def test_a_list_whose_every_file_is_missing_is_one_line_and_lists_them(tmp_path):
    """Every row skipped is the user's error: one line naming the first file and why, and skipped.csv is written."""
    from helpers import run_cli

    lst = tmp_path / "list.csv"
    lst.write_text("path,label\n" + "".join(f"img/{i}.png,{i % 2}\n" for i in range(6)))
    out = tmp_path / "run"
    r = run_cli("--dataset", f"csv:{lst}", "--encoder", "pixels", "--reduce", "none", "-q", "--output", str(out),
                "--cache-dir", str(tmp_path / "c"))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "none of the 6 images could be read" in err[0] and str(tmp_path / "img" / "0.png") in err[0], err[0]
    with open(out / "skipped.csv") as f:
        assert [int(row["row"]) for row in csv.DictReader(f)] == list(range(6))


def test_a_setting_refused_after_loading_leaves_no_empty_run_directory(tmp_path, capsys):
    from gpuclust.run import main

    args = ["--dataset", "digits", "--encoder", "pixels", "--reduce", "pca", "--dims", "5", "--cluster-param",
            "no_such_param=1", "-q", "--cache-dir", str(tmp_path / "c"), "--output"]
    out = tmp_path / "run"
    assert main([*args, str(out)]) == 2
    assert "no_such_param" in capsys.readouterr().err
    assert not out.exists()
    existing = tmp_path / "mine"
    existing.mkdir()  # a directory the user made is left in place
    assert main([*args, str(existing)]) == 2 and existing.is_dir()
