"""The benchmarks' own bookkeeping: re-measuring one size keeps the CSV's other rows; extraction rows are set
against the project's H100 goals."""
import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_rows_round_trip_and_a_rerun_replaces_only_its_own_sizes(tmp_path):
    bs = _bench("bench_scale")
    committed = bs.read_rows(ROOT / "benchmarks" / "results" / "scale-cpu2-x86_64-sklearn1.9.1-umap0.5.12.csv")
    big = [r for r in committed if r["n"] == 1_000_000]
    assert len(big) == 1 and isinstance(big[0]["umap_s"], float) and big[0]["umap_seeded"] is False

    path = tmp_path / "scale.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(committed[0]))
        w.writeheader()
        w.writerows(committed)
    again = bs.read_rows(path)
    assert again == committed

    rerun = dict(again[0], umap_s=1.5, ami=0.5)  # the 20,000-row row measured anew
    other_k = dict(again[0], k=10, umap_s=2.5)   # another measurement altogether
    merged = bs.merge_rows(again, [rerun, other_k])
    assert len(merged) == len(committed) + 1
    assert [r["n"] for r in merged] == sorted(r["n"] for r in merged)
    same = [r for r in merged if r["n"] == rerun["n"] and r["k"] == rerun["k"]]
    assert same == [rerun]
    assert big[0] in merged and other_k in merged
    assert bs.read_rows(tmp_path / "none.csv") == []


def test_extract_rows_measured_on_an_h100_are_set_against_its_goals(tmp_path):
    be = _bench("bench_extract")
    with open(ROOT / "benchmarks" / "results" / "extract-NVIDIA-H100-80GB-HBM3-torch2.11.0.csv", newline="") as f:
        rows = [dict(r, img_per_s=float(r["img_per_s"]), batch=int(r["batch"])) for r in csv.DictReader(f)]
    out = tmp_path / "extract.csv"
    be.save(out, rows)
    with open(out, newline="") as f:
        saved = list(csv.DictReader(f))
    bf16 = [r for r in saved if r["encoder"] == "resnet50" and r["source"] == "tensors" and r["precision"] == "bf16"]
    assert bf16 and all(r["target"] == "20000" for r in bf16)
    assert all(abs(float(r["vs_target"]) - float(r["img_per_s"]) / 20000) < 1e-9 for r in bf16)
    assert all(r["target"] == "" for r in saved if r["precision"] == "fp32" or r["path"] == "plain")
    cpu = dict(bf16[0], device="cpu2-x86_64")
    assert be.target(cpu) is None and be.target(dict(cpu, device="NVIDIA-H100-80GB-HBM3", encoder="vitb16")) == 15000
    assert be.target({"encoder": "vitb16", "source": "device-jpeg", "precision": "fp16", "device": "H100"}) == 5000
