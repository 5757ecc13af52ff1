"""The sweep's label-free pick on real data: the README's example sweep (examples/sweep-fashion-mnist.yaml: 2,000
Fashion-MNIST test images, pixels / EfficientNet-Lite0 / MobileNetV2 x KMeans / ward / HDBSCAN). Today's silhouette
alone picks a coarse HDBSCAN run there; the pick must lose at most 0.02 AMI, or say it is unsure."""
import csv
import itertools
import json
import shutil
import subprocess

import pytest

from gpuclust.select import pick
from gpuclust.sweep import main
from gpuclust.sweep.select import candidate
from helpers import ROOT, store_lock

TARGET = 0.02  # AMI the pick may lose against the best run (issue 24's target)


@pytest.fixture(scope="module")
def readme_sweep(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("readme-sweep") / "s"
    with store_lock(cache_dir):  # the encoders' embeddings are shared with the other Fashion-MNIST tests
        rc = main(["--config", str(ROOT / "examples" / "sweep-fashion-mnist.yaml"), "--cache-dir", str(cache_dir),
                   "--device", "cpu", "--output", str(out)])
    return out, rc


@pytest.fixture(scope="module")
def library_epochs_sweep(tmp_path_factory, cache_dir):
    """The README's sweep with umap-learn's own epochs (500 for these 2,000 rows): the spaces the pick's thresholds
    were measured on (docs/selection-study.md). With the default 200 epochs one smaller grid loses 0.065 at margin
    2.02, unflagged (docs/sweeps.md)."""
    import yaml

    tmp = tmp_path_factory.mktemp("library-epochs-sweep")
    conf = yaml.safe_load((ROOT / "examples" / "sweep-fashion-mnist.yaml").read_text())
    conf["base"]["reduce"] = {"params": {"n_epochs": None}}
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(conf))
    with store_lock(cache_dir):
        rc = main(["--config", str(tmp / "sweep.yaml"), "--cache-dir", str(cache_dir), "--device", "cpu",
                   "--output", str(tmp / "s")])
    assert rc == 0
    return tmp / "s"


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def test_the_pick_is_the_best_run_where_the_silhouette_alone_is_not(readme_sweep, capsys):
    out, rc = readme_sweep
    assert rc == 0
    best = json.loads((out / "best.json").read_text())
    pick_doc, rows = best["label_free"], _rows(out)
    assert pick_doc["criterion"] == "silhouette_x_consensus" and pick_doc["k"] == 10
    assert pick_doc["ami_lost"] <= TARGET and not pick_doc["low_confidence"], pick_doc
    assert pick_doc["ami"] == float(rows[pick_doc["run"]]["ami"])
    assert pick_doc["best_ami"] == max(float(r["ami"]) for r in rows.values())
    # the silhouette alone (what sweeps picked before) prefers a coarse split here and loses far more
    old = best["best"]["silhouette_umap_all"]
    assert pick_doc["best_ami"] - float(rows[old["run"]]["ami"]) > 0.05
    # every ok run was scored, best first, and results.csv holds its score
    assert {e["run"] for e in pick_doc["runs"]} == set(rows) and pick_doc["runs"][0]["run"] == pick_doc["run"]
    for e in pick_doc["runs"]:
        assert float(rows[e["run"]]["label_free_score"]) == e["score"]
        assert e["in_band"] == (abs(int(rows[e["run"]]["n_clusters"]) - 10) <= 2)


def test_the_report_and_the_console_show_the_pick(readme_sweep):
    out, _ = readme_sweep
    doc = json.loads((out / "best.json").read_text())["label_free"]
    page = (out / "report.html").read_text()
    assert "<h2>label-free pick</h2>" in page and f'{doc["run_dir"]}/report.html">run {doc["run"]}</a>' in page
    assert "With the labels: AMI" in page and "Low confidence" not in page


def test_on_every_smaller_grid_the_pick_loses_little_or_says_it_is_unsure(library_epochs_sweep):
    """The same runs taken as smaller sweeps (each encoder alone, each pair of encoders, each clusterer pair): a pick
    that lost more than the target must be low confidence."""
    out = library_epochs_sweep
    rows = _rows(out)
    cands = {i: candidate(i, out / r["run_dir"], int(r["n_clusters"])) for i, r in rows.items()}
    by = lambda key, vals: [i for i, r in rows.items() if r[key] in vals]  # noqa: E731
    encoders = sorted({r["encode.spec"] for r in rows.values()})
    methods = sorted({r["cluster.method"] for r in rows.values()})
    grids = ([by("encode.spec", c) for n in (1, 2) for c in itertools.combinations(encoders, n)]
             + [by("cluster.method", c) for c in itertools.combinations(methods, 2)])
    flagged = 0
    for ids in grids:
        p = pick([cands[i] for i in ids])
        amis = {i: float(rows[i]["ami"]) for i in ids}
        lost = max(amis.values()) - amis[p.id]
        assert lost <= TARGET or p.low, (ids, p.id, lost, p.confidence, p.margin)
        flagged += p.low
    assert flagged < len(grids)  # a confidence that is always low would pass the line above


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium; .ci/run installs it)")
def test_the_sweep_report_shows_the_pick_in_chromium(readme_sweep, tmp_path):
    import numpy as np
    from PIL import Image

    out, _ = readme_sweep
    doc = json.loads((out / "best.json").read_text())["label_free"]
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*cmd, "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    section = dom[dom.index("<h2>label-free pick</h2>"):dom.index("<h2>runs</h2>")]
    links = [s.split('"')[0] for s in section.split('<a href="')[1:]]
    assert links[0] == f"{doc['run_dir']}/report.html" and all((out / link).is_file() for link in links)
    assert f"first in {doc['confidence']:.0%} of bootstrap resamples" in section
    shot = tmp_path / "sweep.png"
    subprocess.run([*cmd, "--window-size=1200,900", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 20 and np.flatnonzero(pixels.min(axis=1) < 200).size > 300  # the pick's text and table


def test_a_run_without_selection_rows_is_left_out_with_a_note(readme_sweep, tmp_path):
    """A run made before runs kept selection.parquet (resumed into a newer sweep) is named, not silently dropped."""
    from types import SimpleNamespace

    from gpuclust.sweep.select import label_free

    out, _ = readme_sweep
    rows = list(_rows(out).values())
    copy = tmp_path / "s"
    shutil.copytree(out / "runs", copy / "runs")
    gone = rows[0]["run"]
    (copy / rows[0]["run_dir"] / "selection.parquet").unlink()
    cfg = SimpleNamespace(data=SimpleNamespace(spec="fashion-mnist"))
    runs = {r["run"]: SimpleNamespace(cfg=cfg, dir=r["run_dir"], label=lambda varied, r=r: r["run_dir"]) for r in rows}
    typed = [{**r, "n_clusters": int(r["n_clusters"]), "ami": float(r["ami"])} for r in rows]
    doc = label_free(copy, typed, runs, [])["fashion-mnist"]
    assert gone not in {e["run"] for e in doc["runs"]} and len(doc["runs"]) == len(rows) - 1
    assert any("not scored" in n and gone in n for n in doc["notes"])
