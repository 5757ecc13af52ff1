"""`python -m gpuclust.export RUN DEST`: a run's clusters as folders, on real images: files linked or copied,
packaged and shard images written again from the dataset, every row exactly once, refusals in one line."""
import csv
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gpuclust.config import ClusterConfig, DataConfig, EncodeConfig, EvalConfig, ReduceConfig, RunConfig
from gpuclust.data import load_dataset
from gpuclust.errors import UserError
from gpuclust.export import export_clusters, main
from gpuclust.pipeline import run_pipeline
from helpers import write_digit_images, write_digit_shard


def _run(tmp_path, spec, name, k=None, cluster="kmeans", params=None, **data):
    cfg = RunConfig(data=DataConfig(spec, **data), encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "cache")),
                    reduce=ReduceConfig("pca", 10), cluster=ClusterConfig(cluster, k=k, params=params or {}),
                    evaluate=EvalConfig(silhouette_umap=False), device="cpu", output=str(tmp_path / name),
                    gallery=0)
    return run_pipeline(cfg, progress=False).output


def _listing(dest: Path) -> pd.DataFrame:
    return pd.read_csv(dest / "export.csv", keep_default_na=False)


def _placed(dest: Path) -> dict:
    """relative file -> its folder, for every image under DEST."""
    return {f"{d.name}/{f.name}": d.name for d in dest.iterdir() if d.is_dir() for f in d.iterdir()}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """60 real digit images in three class folders whose files share names (class_0/000.png, class_1/000.png, ...),
    clustered into 2 groups, so at least one cluster folder receives two files of the same name."""
    tmp = tmp_path_factory.mktemp("export")
    write_digit_images(tmp / "imgs", n_per_class=20, classes=(0, 1, 7))
    return tmp, _run(tmp, f"imagefolder:{tmp / 'imgs'}", "run", k=2)


def test_symlink_export_puts_every_row_in_its_clusters_folder_once(folder_run, tmp_path):
    _, run = folder_run
    labels = pd.read_parquet(run / "labels.parquet")
    dest = tmp_path / "by-cluster"
    result = export_clusters(run, dest, progress=False)
    with open(dest / "export.csv", newline="") as f:
        assert next(csv.reader(f)) == ["row", "cluster", "source", "file", "skipped"]
    listing = _listing(dest)
    assert result.exported == len(labels) == 60 and result.skipped == 0
    assert listing.row.tolist() == labels.row.tolist() and (listing.cluster == labels.label_pred).all()
    placed = _placed(dest)
    assert sorted(placed) == sorted(listing.file)  # each row's file exists, and nothing else was written
    assert sorted(set(placed.values())) == ["cluster-0000", "cluster-0001"]
    for _, r in listing.iterrows():
        target = dest / r.file
        assert target.is_symlink() and os.path.samefile(target, r.source)
        assert r.file.startswith(f"cluster-{r.cluster:04d}/")
    # Same-named files from two classes in one folder: the first keeps its name, later ones carry their row.
    renamed = listing[listing.file.map(lambda f: "-" in Path(f).name)]
    assert len(renamed) > 0
    for _, r in renamed.iterrows():
        assert Path(r.file).name == f"{Path(r.source).stem}-{r.row}.png"
    assert result.clusters == labels.label_pred.map(lambda c: f"cluster-{c:04d}").value_counts().to_dict()


@pytest.mark.parametrize("mode", ["copy", "hardlink"])
def test_copy_and_hardlink_modes(folder_run, tmp_path, mode):
    _, run = folder_run
    dest = tmp_path / mode
    export_clusters(run, dest, mode=mode, clusters=[1], progress=False)
    listing = _listing(dest)
    labels = pd.read_parquet(run / "labels.parquet")
    assert sorted(listing.row) == sorted(labels.row[labels.label_pred == 1]) and set(listing.cluster) == {1}
    for _, r in listing.iterrows():
        target = dest / r.file
        assert not target.is_symlink() and target.read_bytes() == Path(r.source).read_bytes()
        same_inode = os.stat(target).st_ino == os.stat(r.source).st_ino
        assert same_inode == (mode == "hardlink")
    assert not list(dest.rglob(".*.tmp"))


def test_packaged_rows_are_written_as_the_images_the_run_clustered(tmp_path):
    # A stratified subsample: the export must reopen the dataset with the run's own limit, subsample and seed,
    # or row 17 would be another image.
    cfg = RunConfig(data=DataConfig("digits", limit=300, subsample="stratified"),
                    encode=EncodeConfig("pixels", cache_dir=str(tmp_path / "cache")), reduce=ReduceConfig("pca", 10),
                    evaluate=EvalConfig(silhouette_umap=False), device="cpu", output=str(tmp_path / "run"),
                    gallery=0, seed=3)
    run = run_pipeline(cfg, progress=False).output
    ds = load_dataset("digits", 300, subsample="stratified", seed=3)
    result = export_clusters(run, tmp_path / "out", progress=False)
    listing = _listing(tmp_path / "out")
    assert result.exported == 300 and result.mode == "written" and (listing.source == "").all()
    assert len(result.clusters) == 10
    for _, r in listing.iterrows():
        assert Path(r.file).name == f"{r.row:03d}.png"
        written = np.asarray(Image.open(tmp_path / "out" / r.file).convert("RGB"))
        assert np.array_equal(written, np.asarray(ds.load(r.row)))


def test_webdataset_members_are_exported_byte_for_byte_and_a_changed_shard_is_refused(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_digit_shard(shards / "a-000.tar", 0, 150)
    write_digit_shard(shards / "a-001.tar", 150, 150)
    run = _run(tmp_path, f"webdataset:{shards}", "run", k=10)
    export_clusters(run, tmp_path / "out", progress=False)
    listing = _listing(tmp_path / "out")
    assert len(listing) == 300
    with tarfile.open(shards / "a-001.tar") as tar:
        member = tar.extractfile("s0200.png").read()
    row = listing[listing.source.str.endswith("a-001.tar:s0200.png")].iloc[0]
    assert Path(row.file).name == "s0200.png" and (tmp_path / "out" / row.file).read_bytes() == member
    write_digit_shard(shards / "a-001.tar", 150, 100)  # the shard was rewritten with fewer samples
    with pytest.raises(UserError, match="not the one the run clustered"):
        export_clusters(run, tmp_path / "again", progress=False)
    assert not (tmp_path / "again").exists()  # refused before anything was written


def test_noise_folder_and_no_noise(tmp_path):
    run = _run(tmp_path, "digits", "run", cluster="hdbscan", params={"min_cluster_size": 15})
    labels = pd.read_parquet(run / "labels.parquet")
    n_noise = int((labels.label_pred < 0).sum())
    assert n_noise > 0
    result = export_clusters(run, tmp_path / "all", progress=False)
    assert result.clusters["noise"] == n_noise and result.exported == len(labels)
    assert len(list((tmp_path / "all" / "noise").iterdir())) == n_noise
    result = export_clusters(run, tmp_path / "clustered", noise=False, progress=False)
    assert "noise" not in result.clusters and result.exported == len(labels) - n_noise
    assert not (tmp_path / "clustered" / "noise").exists()


def test_a_source_file_gone_since_the_run_is_a_counted_skip(tmp_path, caplog):
    write_digit_images(tmp_path / "imgs", n_per_class=10, classes=(0, 1))
    run = _run(tmp_path, f"folder:{tmp_path / 'imgs'}", "run", k=2)
    gone = tmp_path / "imgs" / "class_1" / "004.png"
    gone.unlink()
    result = export_clusters(run, tmp_path / "out", progress=False)
    assert result.exported == 19 and result.skipped == 1
    listing = _listing(tmp_path / "out")
    miss = listing[listing.file == ""]
    assert miss.source.tolist() == [str(gone)] and "no such file" in miss.skipped.iloc[0]
    assert "skipped 1 image" in caplog.text


def test_cli_refusals_are_one_line_and_force_replaces_only_an_export(folder_run, tmp_path, capsys):
    tmp, run = folder_run

    def refused(*argv) -> str:
        assert main([*map(str, argv), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gpuclust.export: error: ") and err.count("\n") == 1, err
        return err

    assert "not a finished run" in refused(tmp, tmp_path / "x")
    assert "no such run directory" in refused(tmp_path / "nope", tmp_path / "x")
    assert "no such cluster" in refused(run, tmp_path / "x", "--clusters", "5,9")
    with pytest.raises(SystemExit) as exc:
        main([str(run), str(tmp_path / "x"), "--mode", "move"])
    assert exc.value.code == 2
    capsys.readouterr()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert "holds no earlier export" in refused(run, other, "--force")

    dest = tmp_path / "out"
    assert main([str(run), str(dest), "--clusters", "0", "-q"]) == 0
    assert "exported" in capsys.readouterr().out
    (dest / "notes.txt").write_text("keep")
    assert "add --force" in refused(run, dest)
    assert main([str(run), str(dest), "--clusters", "1", "--force", "-q"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["cluster-0001", "export.csv", "export.json", "notes.txt"]
    assert set(_listing(dest).cluster) == {1}


def test_a_run_on_precomputed_embeddings_has_no_images_to_export(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    np.save(tmp_path / "emb.npy", X)
    run = _run(tmp_path, f"embeddings:{tmp_path / 'emb.npy'}", "run", k=3)
    assert main([str(run), str(tmp_path / "out"), "-q"]) == 2
    assert "precomputed embeddings" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()



def test_hardlink_across_filesystems_is_one_line_naming_the_other_modes(folder_run, tmp_path, monkeypatch):
    import errno

    _, run = folder_run

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    with pytest.raises(UserError, match="another filesystem.*--mode symlink or copy"):
        export_clusters(run, tmp_path / "out", mode="hardlink", progress=False)


def test_renamed_files_never_take_another_files_name(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, rel in enumerate(["a/x-2.png", "a/x.png", "b/x.png"] + [f"c/y{j}.png" for j in range(10)]):
        (tmp_path / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(tmp_path / "imgs" / rel)
    run = _run(tmp_path, f"imagefolder:{tmp_path / 'imgs'}", "run", k=1)
    export_clusters(run, tmp_path / "out", mode="copy", progress=False)
    listing = _listing(tmp_path / "out")
    # b/x.png is row 2: NAME-ROW would be x-2.png, a/x-2.png's own name
    assert listing.file.tolist()[:3] == ["cluster-0000/x-2.png", "cluster-0000/x.png", "cluster-0000/x-2-2.png"]
    for _, r in listing.iterrows():
        assert (tmp_path / "out" / r.file).read_bytes() == Path(r.source).read_bytes()


def test_force_removes_only_what_the_earlier_export_wrote(folder_run, tmp_path):
    _, run = folder_run
    dest = tmp_path / "out"
    export_clusters(run, dest, clusters=[0], progress=False)
    mine = dest / "cluster-0000" / "mine.txt"
    mine.write_text("a person's note")
    (dest / "notes").mkdir()
    (dest / "notes" / "todo.txt").write_text("keep")
    export_clusters(run, dest, clusters=[1], force=True, progress=False)
    assert mine.read_text() == "a person's note" and (dest / "notes" / "todo.txt").read_text() == "keep"
    assert sorted(p.name for p in (dest / "cluster-0000").iterdir()) == ["mine.txt"]
    assert set(_listing(dest).cluster) == {1}
    other = tmp_path / "other-tool"
    other.mkdir()
    (other / "export.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="holds no earlier export"):
        export_clusters(run, other, force=True, progress=False)
    assert (other / "export.json").is_file()


def test_force_refuses_a_folder_that_holds_the_runs_own_images(folder_run, tmp_path):
    _, run = folder_run
    dest = tmp_path / "sorted"
    export_clusters(run, dest, mode="copy", progress=False)
    again = _run(tmp_path, f"imagefolder:{dest}", "again", k=2)  # the copies clustered in their new home
    before = sorted(p.relative_to(dest) for p in dest.rglob("*.png"))
    with pytest.raises(UserError, match="own images are inside it"):
        export_clusters(again, dest, force=True, progress=False)
    assert sorted(p.relative_to(dest) for p in dest.rglob("*.png")) == before and len(before) == 60
