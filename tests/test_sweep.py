"""`python -m gpuclust.sweep`: the grid, the results table and best.json against the run directories, store reuse,
resumption after SIGKILL (a real subprocess), and bad grids or bad runs failing the way the docs say."""
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from gpuclust.sweep import main
from helpers import ROOT

N = 400
FAST = ["--dataset", "digits", "--encoder", "pixels", "--device", "cpu", "-q"]
TIMING = {"rows_encoded", "rows_reused", "images_per_s"}


def _rows(sweep_dir):
    with open(sweep_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _sweep_cmd(*args):
    return [sys.executable, "-m", "gpuclust.sweep", *args]


def _stderr_one_line(err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gpuclust.sweep: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def grid2x2(tmp_path_factory):
    """pca/umap x kmeans/agglomerative on 400 digits, with a fresh store so the first run must encode."""
    root = tmp_path_factory.mktemp("sweep2x2")
    handler = _Messages()
    logging.getLogger("gpuclust").addHandler(handler)
    try:
        rc = main([*FAST, "--limit", str(N), "--reduce", "pca,umap", "--dims", "10", "--cluster", "kmeans",
                   "--cluster", "agglomerative", "--cache-dir", str(root / "cache"), "--output", str(root / "s"),
                   "-v"])
    finally:
        logging.getLogger("gpuclust").removeHandler(handler)
    return root / "s", rc, handler.messages


def test_grid_table_matches_run_dirs_and_best(grid2x2):
    out, rc, _ = grid2x2
    assert rc == 0
    rows = _rows(out)
    assert [(r["run"], r["status"], r["reduce.method"], r["cluster.method"]) for r in rows] == [
        ("0001", "ok", "pca", "kmeans"), ("0002", "ok", "pca", "agglomerative"),
        ("0003", "ok", "umap", "kmeans"), ("0004", "ok", "umap", "agglomerative")]  # runs sharing a reduction adjacent
    for r in rows:
        m = json.loads((out / r["run_dir"] / "metrics.json").read_text())
        for key in ("ami", "ari", "nmi", "silhouette", "silhouette_umap", "noise_fraction"):
            assert float(r[key]) == m[key], key  # the CSV keeps every digit
        assert int(r["n_clusters"]) == m["n_clusters"] == 10 and int(r["n_rows"]) == N
        t = json.loads((out / r["run_dir"] / "timings.json").read_text())
        assert float(r["total_s"]) == t["total"] and float(r["encode_s"]) == t["encode"]
        assert (out / r["run_dir"] / "config.json").is_file() and r["error"] == ""

    best = json.loads((out / "best.json").read_text())
    assert best["rank_by"] == "ami" and best["ok"] == 4
    for metric in ("ami", "silhouette_umap"):
        top = max(rows, key=lambda r: float(r[metric]))
        assert best["best"][metric]["run"] == top["run"] and best["best"][metric]["value"] == float(top[metric])
        assert best["best"][metric]["config"]["cluster"]["method"] == top["cluster.method"]
    assert best["best"]["ami"]["value"] > 0.8  # UMAP then clustering separates the digits

    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [t["ami"] for t in table] == [float(r["ami"]) for r in rows]
    recorded = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["config"]["output"] for r in recorded] == [r["run_dir"] for r in rows]


def test_sweep_report_links_every_run_and_sets_silhouette_against_ami(grid2x2):
    """report.html of the sweep directory: runs ranked by AMI, each linked to its own report, the ranking and the
    silhouette-vs-AMI plots, and Kendall's tau between the label-free silhouette and AMI over the runs."""
    import re

    from PIL import Image
    from scipy.stats import kendalltau

    out, _, _ = grid2x2
    page = (out / "report.html").read_text()
    rows = _rows(out)
    links = re.findall(r'<a href="([^"]+)/report.html">(\d{4})</a>', page[page.index("<h2>runs</h2>"):])
    by_ami = sorted(rows, key=lambda r: -float(r["ami"]))
    assert [run for _, run in links] == [r["run"] for r in by_ami]
    for run_dir, run in links:
        assert (out / run_dir / "report.html").is_file() and run_dir == next(r["run_dir"] for r in rows
                                                                             if r["run"] == run)
    for png in ("silhouette_vs_ami.png", "ranking.png"):
        assert f'<img src="{png}"' in page and Image.open(out / png).format == "PNG"
    tau = kendalltau([float(r["silhouette_umap_all"]) for r in rows], [float(r["ami"]) for r in rows]).statistic
    assert f"Kendall's tau between silhouette_umap_all and AMI {tau:.3f} over 4 runs" in page


def test_settings_compared_are_the_results_tables_group_means(grid2x2, capsys):
    """by_setting.csv, the report's tables, its heatmap and the console table: each varied setting's values with the
    mean, best and spread of AMI over every other setting, recomputed here from results.csv."""
    import re
    import statistics

    from PIL import Image

    from gpuclust.report.compare import cell_means

    out, _, _ = grid2x2
    rows = _rows(out)
    with open(out / "by_setting.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [s["setting"] for s in summary] == ["reduce.method"] * 2 + ["cluster.method"] * 2
    for key in ("reduce.method", "cluster.method"):
        mine = [s for s in summary if s["setting"] == key]
        expected = {}
        for r in rows:
            expected.setdefault(r[key], []).append(r)
        assert {s["value"] for s in mine} == set(expected)
        assert float(mine[0]["mean_ami"]) >= float(mine[1]["mean_ami"])  # best first
        for s in mine:
            group = expected[s["value"]]
            amis = [float(r["ami"]) for r in group]
            assert int(s["runs"]) == 2 and float(s["mean_ami"]) == pytest.approx(statistics.fmean(amis), abs=1e-12)
            assert float(s["sd_ami"]) == pytest.approx(statistics.stdev(amis), abs=1e-12)
            top = max(group, key=lambda r: float(r["ami"]))
            assert s["best_run"] == top["run"] and float(s["best_ami"]) == float(top["ami"])
            assert float(s["mean_silhouette_umap_all"]) == pytest.approx(
                statistics.fmean(float(r["silhouette_umap_all"]) for r in group), abs=1e-12)
    for key in ("reduce.method", "cluster.method"):  # the silhouette's pick: the value with the best mean silhouette
        mine = [s for s in summary if s["setting"] == key]
        top = max(mine, key=lambda s: float(s["mean_silhouette_umap_all"]))
        assert [s["label_free_pick"] for s in mine] == [str(s is top) for s in mine]
    umap, pca = (next(s for s in summary if s["value"] == v) for v in ("umap", "pca"))
    assert summary[0] is umap and float(umap["mean_ami"]) > float(pca["mean_ami"])  # as on every digits run so far

    page = (out / "report.html").read_text()
    assert '<img src="heatmap.png"' in page and Image.open(out / "heatmap.png").format == "PNG"
    assert "<h3>reduce.method</h3>" in page and "<h3>cluster.method</h3>" in page
    section = page[page.index("settings compared"):page.index("<h2>runs</h2>")]
    assert f"<td>{float(umap['mean_ami']):.4f}</td>" in section
    for run_dir, run in re.findall(r'<a href="([^"]+)/report.html">(\d{4})</a>', section):
        assert (out / run_dir / "report.html").is_file() and run in {s["best_run"] for s in summary}
    cells = cell_means([{**r, "ami": float(r["ami"])} for r in rows], ("reduce.method", "cluster.method"), "ami")
    assert {(a, b): v for a, row in cells.items() for b, (v, n) in row.items()} == {
        (r["reduce.method"], r["cluster.method"]): float(r["ami"]) for r in rows}  # one run per cell here

    capsys.readouterr()
    assert main([*FAST[:-1], "--limit", str(N), "--reduce", "pca,umap", "--dims", "10", "--cluster",
                 "kmeans,agglomerative", "--cache-dir", str(out.parent / "cache"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean ami per setting, over every other setting" in printed
    line = next(x for x in printed.splitlines() if "reduce.method" in x and "umap" in x)
    assert f"{float(umap['mean_ami']):.4f}" in line and umap["best_run"] in line
    assert ("yes" in line) == (umap["label_free_pick"] == "True") and "silhouette's pick" in printed


def test_settings_comparison_orders_lower_is_better_and_names_unset_parameters():
    from gpuclust.report.compare import by_setting, heatmap_axes

    rows = [{"run": "0001", "cluster.method": "kmeans", "cluster.params.min_cluster_size": None,
             "davies_bouldin": 0.9, "silhouette_umap_all": 0.5},
            {"run": "0002", "cluster.method": "hdbscan", "cluster.params.min_cluster_size": 20,
             "davies_bouldin": 0.4, "silhouette_umap_all": 0.6},
            {"run": "0003", "cluster.method": "hdbscan", "cluster.params.min_cluster_size": 50,
             "davies_bouldin": 0.6, "silhouette_umap_all": float("nan")}]
    varied = ["cluster.method", "cluster.params.min_cluster_size"]
    summary = by_setting(rows, varied, "davies_bouldin", lower_is_better=True)
    assert [(s["setting"], s["value"]) for s in summary] == [
        ("cluster.method", "hdbscan"), ("cluster.method", "kmeans"), ("cluster.params.min_cluster_size", "20"),
        ("cluster.params.min_cluster_size", "50"), ("cluster.params.min_cluster_size", "(not set)")]
    assert summary[0]["best_run"] == "0002" and summary[0]["best_davies_bouldin"] == 0.4
    assert summary[0]["mean_silhouette_umap_all"] == 0.6  # a NaN proxy is left out of the mean, not propagated
    assert summary[1]["sd_davies_bouldin"] is None  # one run
    assert [s["label_free_pick"] for s in summary] == [True, False, True, False, False]
    assert heatmap_axes(varied, rows) == ("cluster.method", "cluster.params.min_cluster_size")
    assert heatmap_axes(["seed", "cluster.method", "data.spec", "encode.spec"], rows) == ("encode.spec", "data.spec")
    assert heatmap_axes(["seed", "cluster.method"], rows) == ("seed", "cluster.method")
    assert heatmap_axes(["seed"], rows) is None


def test_the_example_sweep_file_is_a_valid_grid(capsys):
    """examples/sweep-fashion-mnist.yaml, which docs/sweeps.md runs: every grid point checked, nine runs listed."""
    assert main(["--config", str(ROOT / "examples" / "sweep-fashion-mnist.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9 and lines[0] == "[1/9] fashion-mnist pixels umap50 kmeans"
    assert lines[-1] == "[9/9] fashion-mnist mobilenetv2 umap50 hdbscan"


def test_unlabelled_sweep_report_ranks_by_the_silhouette_without_the_ami_plot(tmp_path):
    from helpers import write_digit_images

    write_digit_images(tmp_path / "photos", n_per_class=20, classes=(0, 1, 7))
    rc = main(["--dataset", f"folder:{tmp_path / 'photos'}", "--encoder", "pixels", "--device", "cpu", "-q",
               "--reduce", "pca", "--dims", "5", "--cluster", "kmeans,agglomerative", "--k", "3",
               "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "s")])
    assert rc == 0
    page = (tmp_path / "s" / "report.html").read_text()
    assert "ranked by silhouette_umap_all" in page and '<img src="ranking.png"' in page
    assert not (tmp_path / "s" / "silhouette_vs_ami.png").exists() and "Kendall" not in page
    assert page[page.index("<h2>runs</h2>"):].count('/report.html">') == 2
    # the label-free pick without labels: the silhouette at the asked k (two runs), no AMI to say what it lost
    pick = json.loads((tmp_path / "s" / "best.json").read_text())["label_free"]
    assert pick["criterion"] == "silhouette_umap_all" and pick["k"] == 3 and "ami_lost" not in pick
    assert pick["rows"] == 60 and {e["run"] for e in pick["runs"]} == {"0001", "0002"}
    assert "<h2>label-free pick</h2>" in page and "With the labels" not in page


def test_kendall_tau_needs_three_runs_that_differ():
    from gpuclust.report.sweep_html import kendall_tau

    assert kendall_tau([0.1, 0.2], [0.3, 0.4]) is None and kendall_tau([0.1] * 3, [0.3, 0.4, 0.5]) is None
    assert kendall_tau([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]) == 1.0 and kendall_tau([0.1, 0.2, 0.3], [3, 2, 1]) == -1.0


def test_label_free_ranking_does_not_reward_leaving_rows_as_noise():
    """Without labels the default rank is the UMAP silhouette over every row (noise 0): a run that clusters a tenth of
    the rows tightly and leaves the rest as noise must not beat one that clusters them all well."""
    from gpuclust.sweep import best_doc, default_rank

    rows = [{"run": "0001", "status": "ok", "silhouette_umap": 0.91, "noise_fraction": 0.9,
             "silhouette_umap_all": 0.91 * 0.1},
            {"run": "0002", "status": "ok", "silhouette_umap": 0.62, "noise_fraction": 0.0,
             "silhouette_umap_all": 0.62}]
    rank = default_rank(rows)
    assert rank == "silhouette_umap_all"
    cfg = SimpleNamespace(to_dict=lambda: {"seed": 0}, data=SimpleNamespace(spec="folder:photos"))
    runs = {r["run"]: SimpleNamespace(cfg=cfg, label=lambda varied: "x", dir=f"runs/{r['run']}") for r in rows}
    picks = best_doc(rows, runs, [], rank)["best"]
    assert picks["silhouette_umap_all"]["run"] == "0002" and picks["silhouette_umap"]["run"] == "0001"
    assert default_rank([{**rows[0], "ami": 0.5}]) == "ami"


def test_encoder_runs_once_and_reductions_are_reused(grid2x2):
    out, _, messages = grid2x2
    rows = _rows(out)
    assert [(int(r["rows_encoded"]), int(r["rows_reused"])) for r in rows] == [(N, 0)] + [(0, N)] * 3
    assert sum("reusing stored embeddings" in m for m in messages) == 3
    # Run 2 reuses run 1's PCA and its 50-d UMAP for silhouette_umap; run 4 reuses run 3's UMAP fit.
    assert sum("reusing the stored pca space" in m for m in messages) == 1
    assert sum("reusing the stored umap space" in m for m in messages) == 2


def test_rerun_of_a_finished_sweep_runs_nothing(grid2x2, capsys):
    out, _, _ = grid2x2
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    rows = _rows(out)
    assert main([*FAST, "--limit", str(N), "--reduce", "pca,umap", "--dims", "10", "--cluster",
                 "kmeans,agglomerative", "--cache-dir", str(out.parent / "cache"), "--output", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == before and len(before) == 4
    assert _rows(out) == rows


def test_a_sweep_recorded_with_other_loader_workers_resumes(grid2x2, capsys):
    """DataLoader workers change no number: a sweep begun when --num-workers defaulted to 0 resumes under auto,
    running nothing again."""
    out, _, _ = grid2x2
    meta = out / "sweep.json"
    doc = json.loads(meta.read_text())
    for run in doc["runs"]:
        run["config"]["encode"]["num_workers"] = 0
    meta.write_text(json.dumps(doc))
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert main([*FAST, "--limit", str(N), "--reduce", "pca,umap", "--dims", "10", "--cluster",
                 "kmeans,agglomerative", "--cache-dir", str(out.parent / "cache"), "--output", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == before and len(before) == 4
    assert {r["config"]["encode"]["num_workers"] for r in json.loads(meta.read_text())["runs"]} == {"auto"}


def test_a_run_fitted_under_other_umap_defaults_is_run_again_on_resume(grid2x2, capsys):
    """A sweep begun before UMAP's 200-epoch default: its UMAP runs (config.json without resolved.umap_defaults) are
    run again, its PCA runs are not."""
    out, _, _ = grid2x2
    configs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/config.json")}
    umap_runs = sorted(d for d, c in configs.items() if c["reduce"]["method"] == "umap")
    assert len(umap_runs) == 2 and all("umap_defaults" in c["resolved"] for c in configs.values())
    old = out / "runs" / umap_runs[0] / "config.json"
    doc = configs[umap_runs[0]]
    del doc["resolved"]["umap_defaults"]
    old.write_text(json.dumps(doc))
    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert main([*FAST, "--limit", str(N), "--reduce", "pca,umap", "--dims", "10", "--cluster",
                 "kmeans,agglomerative", "--cache-dir", str(out.parent / "cache"), "--output", str(out)]) == 0
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert [d for d in before if after[d] != before[d]] == [umap_runs[0]]
    assert "umap_defaults" in json.loads(old.read_text())["resolved"]


def test_another_grid_in_the_same_directory_is_refused(grid2x2, capsys):
    out, _, _ = grid2x2
    assert main([*FAST, "--limit", str(N), "--reduce", "pca", "--dims", "10", "--cluster", "kmeans",
                 "--output", str(out)]) == 2
    _stderr_one_line(capsys.readouterr().err, "holds another sweep", "4 runs there, 1 now", "--force")
    assert len(_rows(out)) == 4


def _resume_args(cache, out, config):
    return _sweep_cmd("--config", str(config), "--dataset", "digits", "--encoder", "pixels", "--limit", "300",
                      "--device", "cpu", "--reduce", "pca", "--dims", "10", "--cluster",
                      "kmeans,agglomerative,spectral", "--seed", "0,1", "--cache-dir", str(cache), "--output", str(out))


def test_sigkill_mid_sweep_then_rerun_equals_an_uninterrupted_sweep(tmp_path):
    config = tmp_path / "sweep.yaml"
    # Seeded PCA (sklearn's randomized solver draws otherwise); no UMAP, so each process is quick.
    config.write_text("base:\n  reduce: {params: {random_state: 0}}\n  evaluate: {silhouette_umap: false}\n")
    out = tmp_path / "killed"
    proc = subprocess.Popen(_resume_args(tmp_path / "cache", out, config), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ((out / "results.csv").is_file() and any(r["status"] == "ok" for r in _rows(out))):
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [r["run"] for r in _rows(out) if r["status"] == "ok"]
    assert 1 <= len(finished) < 6, finished  # the kill landed mid-sweep, so the rerun has work left
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")
              if p.parent.name[:4] in finished}
    assert len(mtimes) == len(finished)

    # The rerun fans the rest out over two processes: resumption and the fan-out must give the sequential table.
    rerun = subprocess.run([*_resume_args(tmp_path / "cache", out, config), "--jobs", "2"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    skipped = [line.split("]")[0].split("[")[1] for line in rerun.stdout.splitlines() if "done earlier:" in line]
    assert skipped == [f"{int(run)}/6" for run in finished]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished runs were not redone
    assert "up to 2 runs at once" in rerun.stdout
    assert all((out / r["run_dir"] / "log.txt").is_file() for r in _rows(out) if r["run"] not in finished)

    clean = tmp_path / "clean"
    proc = subprocess.run(_resume_args(tmp_path / "other-cache", clean, config), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got, want = _rows(out), _rows(clean)
    assert len(got) == 6 and all(r["status"] == "ok" for r in got)
    assert list(got[0]) == list(want[0])
    same = [c for c in want[0] if not c.endswith("_s") and c not in TIMING]
    assert "ami" in same and "silhouette" in same and "seed" in same
    _same_rows(got, want, same)


def _same_rows(got, want, columns):
    """Equal tables: labels-based metrics and settings exactly; geometry-based scores (silhouette, CH, DB) to 1e-6,
    since a fanned-out run's BLAS runs on fewer threads and sums in another order."""
    geometric = ("silhouette", "calinski_harabasz", "davies_bouldin")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for c in columns:
            if c.startswith(geometric) and w[c] not in ("", "None", "True", "False"):
                assert float(g[c]) == pytest.approx(float(w[c]), rel=1e-6), (w["run"], c)
            else:
                assert g[c] == w[c], (w["run"], c)


@pytest.mark.parametrize("yaml_text,args,needles", [
    (None, ["--cluster", "kmeans,nosuch"], ["grid point 2 of 2", "unknown clusterer 'nosuch'"]),
    ("grid: [unclosed\n", [], ["not valid YAML"]),
    ("grid:\n  cluster.metod: [kmeans]\n", [], ["unknown grid key 'cluster.metod'"]),
    ("grid:\n  cluster:\n    - kmeans\n    - {method: hdbscan, params: {min_cluster_size: 1}}\n", [],
     ["grid point 2 of 2", "min_cluster_size=1"]),
    (None, ["--reduce", "pca,,umap"], ["--reduce 'pca,,umap'", "an empty value"]),
    (None, ["--reduce", "umap", "--dims", "0.9"], ["grid point 1 of 1", "UMAP needs a whole number"]),
    (None, ["--seed", "-1"], ["--seed -1"]),
    (None, ["--top", "-1"], ["--top", "at least 1"]),
    ("base:\n  reduce: {dims: abc}\n", [], ["base.reduce.dims 'abc'", "a number"]),
])
def test_bad_grid_exits_2_and_runs_nothing(yaml_text, args, needles, tmp_path):
    extra = []
    if yaml_text is not None:
        (tmp_path / "sweep.yaml").write_text(yaml_text)
        extra = ["--config", str(tmp_path / "sweep.yaml")]
    proc = subprocess.run(_sweep_cmd(*FAST, *extra, *args, "--cache-dir", str(tmp_path / "cache"), "--output",
                                     str(tmp_path / "s")), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _stderr_one_line(proc.stderr, *needles)
    assert not (tmp_path / "s").exists() and not (tmp_path / "cache").exists()


def _k_sweep(tmp_path, cache_dir, *extra):
    config = tmp_path / "sweep.yaml"
    config.write_text("base:\n  evaluate: {silhouette_umap: false}\n")
    return main([*FAST, "--config", str(config), "--limit", "300", "--reduce", "pca", "--dims", "10", "--k",
                 "10,5000", "--cache-dir", str(cache_dir), "--output", str(tmp_path / "s"), *extra])


def test_a_run_failing_on_its_settings_is_a_row_and_the_others_run(tmp_path, cache_dir, capsys):
    assert _k_sweep(tmp_path, cache_dir) == 2
    rows = _rows(tmp_path / "s")
    assert [(r["cluster.k"], r["status"]) for r in rows] == [("10", "ok"), ("5000", "error")]
    assert rows[1]["error"] == "--k 5000: must be between 1 and the number of images (300)"
    assert float(rows[0]["ami"]) > 0.5 and rows[1]["ami"] == ""
    assert "--k 5000" in (tmp_path / "s" / rows[1]["run_dir"] / "error.txt").read_text()
    _stderr_one_line(capsys.readouterr().err, "1 of 2 runs failed on their settings", "--k 5000")
    assert json.loads((tmp_path / "s" / "best.json").read_text())["best"]["ami"]["run"] == "0001"
    page = (tmp_path / "s" / "report.html").read_text()
    assert "1 of 2 runs finished ok" in page and "runs that failed" in page
    assert "error: --k 5000: must be between 1 and the number of images (300)" in page


def test_an_internal_error_is_recorded_and_the_sweep_goes_on(tmp_path, cache_dir, monkeypatch, capsys):
    import gpuclust.pipeline

    real = gpuclust.pipeline.run_pipeline

    def flaky(cfg, progress=True):
        if cfg.cluster.k == 10:
            raise RuntimeError("simulated crash\nsecond line")
        return real(cfg, progress)

    monkeypatch.setattr(gpuclust.pipeline, "run_pipeline", flaky)
    assert _k_sweep(tmp_path, cache_dir) == 1
    rows = _rows(tmp_path / "s")
    assert [(r["status"], r["error"]) for r in rows] == [
        ("internal_error", "RuntimeError: simulated crash"),
        ("error", "--k 5000: must be between 1 and the number of images (300)")]
    assert "Traceback" in (tmp_path / "s" / rows[0]["run_dir"] / "error.txt").read_text()
    assert "internal error" in capsys.readouterr().err
    # A rerun redoes failed runs (an internal error may have been transient); ok rows would be kept.
    monkeypatch.setattr(gpuclust.pipeline, "run_pipeline", real)
    assert _k_sweep(tmp_path, cache_dir) == 2
    assert [r["status"] for r in _rows(tmp_path / "s")] == ["ok", "error"]


def test_yaml_grid_orders_axes_and_keeps_params_with_their_clusterer(tmp_path, capsys):
    from gpuclust.sweep import parse_options, plan, varied_keys

    (tmp_path / "sweep.yaml").write_text(
        "base:\n  data: {limit: 100}\n  cluster: {k: 10}\n"
        "grid:\n"
        "  cluster:\n    - kmeans\n    - {method: hdbscan, k: null, params: {min_cluster_size: 5}}\n"
        "    - {method: hdbscan, k: null, params: {min_cluster_size: 20}}\n"
        "  reduce.dims: [5, 10]\n"
        "  data.spec: [digits, mnist5k]\n")
    argv = ["--config", str(tmp_path / "sweep.yaml"), "--encoder", "pixels", "--reduce", "pca"]
    runs, _ = plan(parse_options(argv))
    got = [(r.cfg.data.spec, r.cfg.reduce.dims, r.cfg.cluster.method, r.cfg.cluster.k, r.cfg.cluster.params)
           for r in runs]
    assert got[:4] == [("digits", 5, "kmeans", 10, {}), ("digits", 5, "hdbscan", None, {"min_cluster_size": 5}),
                       ("digits", 5, "hdbscan", None, {"min_cluster_size": 20}), ("digits", 10, "kmeans", 10, {})]
    assert len(got) == 12 and got[6][0] == "mnist5k"  # dataset outermost, clusterer innermost
    varied = varied_keys(runs)
    assert varied == ["data.spec", "reduce.dims", "cluster.method", "cluster.k", "cluster.params.min_cluster_size"]
    assert runs[1].label(varied) == "digits pixels pca5 hdbscan k=None min_cluster_size=5"
    assert runs[0].label(varied) == "digits pixels pca5 kmeans k=10"  # no min_cluster_size=None: kmeans lacks it
    assert runs[1].dir == "runs/0002-digits-pixels-pca5-hdbscan"
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("\n") == 12
    assert not list(tmp_path.glob("sweeps"))


# ------------------------------------------------------------------------------------------------------ fan-out


def test_fanned_out_runs_wait_for_what_they_share(tmp_path):
    """The first run of a (dataset, encoder) encodes alone; runs needing the same reduction wait for its fit."""
    from gpuclust.sweep import next_ready, parse_options, plan

    runs, _ = plan(parse_options(
        [*FAST, "--reduce", "pca,umap", "--cluster", "kmeans,agglomerative", "--seed", "0,1"]))
    assert [(r.cfg.seed, r.cfg.reduce.method, r.cfg.cluster.method) for r in runs[:4]] == [
        (0, "pca", "kmeans"), (0, "pca", "agglomerative"), (0, "umap", "kmeans"), (0, "umap", "agglomerative")]
    pending, shared = list(runs), set()
    assert next_ready(pending, [], shared) is runs[0]
    # While run 1 encodes, every run of that (dataset, encoder) waits, whatever its seed: the seed does not change
    # which rows are encoded.
    assert next_ready(pending[1:], [runs[0]], shared) is None
    (tmp_path / "drawn.yaml").write_text("base:\n  data: {subsample: stratified}\n")
    drawn, _ = plan(parse_options(
        [*FAST, "--config", str(tmp_path / "drawn.yaml"), "--limit", "100", "--reduce", "pca", "--seed", "0,1"]))
    assert next_ready(drawn[1:], [drawn[0]], set()) is drawn[1]  # a stratified draw per seed: another store
    from gpuclust.sweep import _share_keys

    shared.update(_share_keys(runs[0]))  # run 1 finished: embeddings and its PCA are stored
    assert next_ready(pending[1:], [], shared) is runs[1]
    # With run 3 fitting UMAP for seed 0, run 4 (same UMAP) waits; run 2 (stored PCA) does not.
    assert next_ready([runs[1], runs[3]], [runs[2]], shared) is runs[1]
    assert next_ready([runs[3]], [runs[2]], shared) is None


def test_too_many_gpus_or_a_bad_fan_out_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main([*FAST, "--gpus", "2", "--output", str(tmp_path / "a")]) == 2
    _stderr_one_line(capsys.readouterr().err, "--gpus 2: 0 GPU(s) visible")
    (tmp_path / "b.yaml").write_text("base:\n  workers: 2\n")
    assert main([*FAST, "--config", str(tmp_path / "b.yaml"), "--jobs", "2", "--output", str(tmp_path / "b")]) == 2
    _stderr_one_line(capsys.readouterr().err, "fanned-out sweep", "remove gpus/workers")
    assert main([*FAST, "--jobs", "0", "--output", str(tmp_path / "c")]) == 2
    _stderr_one_line(capsys.readouterr().err, "--jobs 0")


def test_gpus_pin_one_gpu_per_child(tmp_path, monkeypatch):
    """--gpus 2 hands each concurrent child its own CUDA_VISIBLE_DEVICES entry (children recorded, not run)."""
    import gpuclust.sweep as sw
    import gpuclust.sweep.fanout as fanout

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    seen = []

    class Proc:
        def __init__(self, env):
            self.env = env

        def poll(self):
            return 0

    monkeypatch.setattr(fanout, "_spawn",
                        lambda cmd, run_dir, env: seen.append(env["CUDA_VISIBLE_DEVICES"]) or Proc(env))
    args = sw.parse_options([*FAST, "--seed", "0,1,2", "--gpus", "2"])
    runs, _ = sw.plan(args)
    slots = sw.open_slots(args, sw.check_fan_out(args, runs))
    assert slots.capacity == 2 and slots.gpus == ["3", "5"]
    slots.start(runs[0], tmp_path)
    slots.start(runs[1], tmp_path)
    assert seen == ["3", "5"]
    slots._procs.pop(runs[0].id)  # the child on GPU 3 finished: the next run takes its GPU
    slots._slot_of.pop(runs[0].id)
    slots.start(runs[2], tmp_path)
    assert seen == ["3", "5", "3"]


def test_a_child_killed_by_a_signal_is_an_internal_error_row(tmp_path):
    from gpuclust.sweep import _outcome

    (tmp_path / "log.txt").write_text("encode: start\n")
    assert _outcome(tmp_path, -9) == ("internal_error", "the run's process was killed by SIGKILL (out of memory?)")
    text = (tmp_path / "error.txt").read_text()
    assert "killed by SIGKILL" in text and "encode: start" in text
    (tmp_path / "error.txt").write_text("--k 5000: must be between 1 and the number of images (300)\nmore\n")
    assert _outcome(tmp_path, 2) == ("error", "--k 5000: must be between 1 and the number of images (300)")


def _children_of_sweep(out) -> list[int]:
    """Pids of fanned-out run processes writing under `out` (from /proc)."""
    pids = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                cmd = open(f"/proc/{proc}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "child_main" in cmd and str(out) in cmd:
                pids.append(int(proc))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_a_fanned_out_sweep_kills_its_runs(tmp_path):
    out = tmp_path / "s"
    (tmp_path / "drawn.yaml").write_text("base:\n  data: {subsample: stratified}\n")
    proc = subprocess.Popen(_sweep_cmd(*FAST, "--config", str(tmp_path / "drawn.yaml"), "--limit", "300", "--reduce",
                                       "pca", "--dims", "10", "--seed", "0,1", "--cache-dir", str(tmp_path / "cache"),
                                       "--output", str(out), "--jobs", "2"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_children_of_sweep(out)) < 2:  # two seeded stratified draws share nothing, so both start at once
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    children = _children_of_sweep(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{pid}") and _is_running(pid) for pid in children):
        assert time.time() < deadline, "a run outlived its sweep"
        time.sleep(0.05)


def _is_running(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sweep_on_a_dask_cluster_equals_the_in_process_sweep(grid2x2, tmp_path):
    """--scheduler-address: each run is a task on a worker (here 2 local worker processes) and writes the same
    table as the in-process sweep, reusing its store."""
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    seq, _, _ = grid2x2
    out = tmp_path / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster:
        rc = main([*FAST, "--limit", str(N), "--reduce", "pca,umap", "--dims", "10", "--cluster",
                   "kmeans,agglomerative", "--cache-dir", str(seq.parent / "cache"), "--output", str(out),
                   "--scheduler-address", cluster.scheduler_address])
    assert rc == 0
    got, want = _rows(out), _rows(seq)
    same = [c for c in want[0] if not c.endswith("_s") and c not in TIMING and c != "run_dir"]
    assert "ami" in same and "silhouette_umap" in same
    _same_rows(got, want, same)
    assert all(int(r["rows_reused"]) == N for r in got)
    assert all("reduce: reusing the stored" in (out / r["run_dir"] / "log.txt").read_text() for r in got)


def test_an_unreachable_scheduler_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    import gpuclust.distributed

    monkeypatch.setattr(gpuclust.distributed, "CONNECT_TIMEOUT", "2s")  # refused connections are retried until then
    rc = main([*FAST, "--limit", "50", "--reduce", "pca", "--dims", "5", "--output", str(tmp_path / "s"),
               "--scheduler-address", "tcp://127.0.0.1:1"])
    assert rc == 2
    _stderr_one_line(capsys.readouterr().err, "--scheduler-address tcp://127.0.0.1:1: cannot connect")
    assert not (tmp_path / "s").exists()  # refused before the sweep directory was made


def test_fan_out_refusals_leave_no_directory_and_dry_run_makes_them_too(tmp_path, capsys, monkeypatch):
    """A refused fan-out writes nothing, so the fix the message asks for can rerun into the same directory."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    (tmp_path / "w.yaml").write_text("base:\n  workers: 2\n")
    for extra, needle in [(["--jobs", "0"], "--jobs 0"), (["--gpus", "2"], "--gpus 2: 0 GPU(s) visible"),
                          (["--config", str(tmp_path / "w.yaml"), "--jobs", "2"], "remove gpus/workers")]:
        for dry in ([], ["--dry-run"]):
            rc = main([*FAST, "--limit", "50", "--reduce", "pca", "--dims", "5", *extra, *dry,
                       "--output", str(tmp_path / "s")])
            err = capsys.readouterr().err
            if dry and extra == ["--gpus", "2"]:  # a dry run plans a GPU sweep on a machine without GPUs
                assert rc == 0 and err == ""
            else:
                assert rc == 2
                _stderr_one_line(err, needle)
            assert not (tmp_path / "s").exists()
    assert main([*FAST, "--limit", "50", "--reduce", "pca", "--dims", "5", "--jobs", "1", "--cluster",
                 "kmeans,agglomerative", "--output", str(tmp_path / "s"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert [r["status"] for r in _rows(tmp_path / "s")] == ["ok", "ok"]


def test_rank_by_must_name_a_metric_and_falls_back_when_no_run_has_it(tmp_path, capsys):
    from helpers import write_digit_images

    assert main([*FAST, "--rank-by", "silhouette_bogus", "--output", str(tmp_path / "x")]) == 2
    _stderr_one_line(capsys.readouterr().err, "--rank-by silhouette_bogus: not a metric")
    write_digit_images(tmp_path / "photos", n_per_class=10, classes=(0, 1, 7))
    args = ["--dataset", f"folder:{tmp_path / 'photos'}", "--encoder", "pixels", "--device", "cpu", "--reduce",
            "pca", "--dims", "3", "--k", "2,3", "--cache-dir", str(tmp_path / "cache"), "--output",
            str(tmp_path / "s")]
    assert main([*args, "--rank-by", "ami"]) == 0  # unlabelled: no run has an AMI
    out = capsys.readouterr().out
    assert "sweep: no run has ami; ranked by silhouette_umap_all" in out
    assert json.loads((tmp_path / "s" / "best.json").read_text())["rank_by"] == "silhouette_umap_all"
    with open(tmp_path / "s" / "by_setting.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [s["value"] for s in summary] == sorted(["2", "3"], key=lambda v: -float(
        next(r for r in summary if r["value"] == v)["mean_silhouette_umap_all"]))
    table = next(line for line in out.splitlines() if "mean silhouette_umap_all" in line and "runs" in line)
    assert table.count("silhouette_umap_all") == 1  # the rank metric is the proxy: one column, not two
    page = (tmp_path / "s" / "report.html").read_text()
    assert page.count("<th>mean silhouette_umap_all</th>") == 1


def test_force_discards_the_old_grids_summary_and_report(tmp_path):
    base = [*FAST, "--limit", "60", "--reduce", "pca", "--dims", "5", "--cache-dir", str(tmp_path / "c"),
            "--output", str(tmp_path / "s")]
    assert main([*base, "--k", "5,10"]) == 0
    assert {"by_setting.csv", "report.html"} <= {p.name for p in (tmp_path / "s").iterdir()}
    assert main([*base, "--k", "10", "--force"]) == 0  # varies nothing: no summary to write
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert "by_setting.csv" not in names and "report.html" in names and len(_rows(tmp_path / "s")) == 1


def test_exporting_a_sweep_directory_exports_its_best_run(grid2x2, tmp_path):
    from gpuclust.export import export_clusters

    out, rc, _ = grid2x2
    assert rc == 0
    rows = _rows(out)
    top = max(rows, key=lambda r: float(r["ami"]))
    result = export_clusters(out, tmp_path / "best", progress=False)
    assert json.loads((tmp_path / "best" / "export.json").read_text())["run"] == str((out / top["run_dir"]).resolve())
    assert result.exported == N and len(result.clusters) == int(top["n_clusters"])
