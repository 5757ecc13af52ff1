"""How often `--k auto`'s confidence (gpuclust/select/kauto.py) was right on the selection study's 32 cases.

Reads the study's committed CSVs (benchmarks/selection_kauto.py wrote them): per set x encoder x clusterer, the
silhouette's k and prediction strength per k. Applies the library's own rule (`k_by_prediction_strength`) and
agreement (`agree`), then counts: cases where the two ks agree, how many of those the silhouette's k was right
(within +-20% of the true k, AMI loss <= 0.05 against the true k), and the AMI lost when flagged and when not.

    python benchmarks/selection_kauto_confidence.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuclust.select.kauto import agree, k_by_prediction_strength  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TAG = "cpu2-x86_64-sklearn1.9.1-umap0.5.12"
CASE = ["set", "encoder", "clusterer"]


def cases(summary_csv: Path = RESULTS / f"selection-kauto-{TAG}.csv",
          sweep_csv: Path = RESULTS / f"selection-kauto-sweep-{TAG}.csv") -> pd.DataFrame:
    """One row per case: the silhouette's k (k_sil), the study's prediction-strength k (k_ps_study), the library
    rule's k from the per-k PS (k_ps), the true k, the silhouette's loss against the true k, whether it was right,
    and whether the two ks agree (`agree`, the low-confidence flag's negation)."""
    summ = pd.read_csv(summary_csv)
    sil = summ[summ["criterion"] == "silhouette"].set_index(CASE)
    ps_study = summ[summ["criterion"] == "prediction_strength_0.8"].set_index(CASE)["chosen_k"]
    sweep = pd.read_csv(sweep_csv)
    k_ps = sweep.groupby(CASE, sort=False).apply(
        lambda g: k_by_prediction_strength(dict(zip(g["k"].astype(int), g["prediction_strength"]))),
        include_groups=False)
    out = pd.DataFrame({"k_sil": sil["chosen_k"], "k_ps_study": ps_study, "k_ps": k_ps.reindex(sil.index),
                        "true_k": sil["true_k"], "loss": sil["loss_vs_true_k"]})
    out["right"] = ((out["k_sil"] - out["true_k"]).abs() <= 0.2 * out["true_k"]) & (out["loss"] <= 0.05)
    out["agree"] = [agree(int(a), int(b)) for a, b in zip(out["k_sil"], out["k_ps"])]
    return out


def summary(frame: pd.DataFrame) -> dict:
    """The numbers docs/selection-study.md quotes."""
    a, f = frame[frame["agree"]], frame[~frame["agree"]]
    return {"cases": len(frame), "agree": len(a), "right_when_agree": int(a["right"].sum()),
            "right_when_flagged": int(f["right"].sum()), "loss_agree_median": float(a["loss"].median()),
            "loss_agree_max": float(a["loss"].max()), "loss_flagged_median": float(f["loss"].median()),
            "loss_flagged_max": float(f["loss"].max()), "flagged_loss_over_0.05": int((f["loss"] > 0.05).sum()),
            "rule_matches_study": int((frame["k_ps"] == frame["k_ps_study"]).sum())}


if __name__ == "__main__":
    frame = cases()
    with pd.option_context("display.width", 160, "display.max_columns", None):
        print(frame.round(3))
    for key, value in summary(frame).items():
        print(f"{key}: {np.round(value, 3)}")
