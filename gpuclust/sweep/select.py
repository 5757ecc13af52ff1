"""A sweep's label-free pick (gpuclust/select) from its finished runs' folders: each ok run's selection.parquet (a
seeded sample of rows with their labels and silhouettes in the run's UMAP space), the number of clusters it found and
the k it was asked for. One pick per dataset; with labels, how much AMI the pick lost against the best run."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UserError
from .grid import Run

log = logging.getLogger("gpuclust.sweep")


def asked_k(config: dict) -> int | str | None:
    """The number of clusters a run was asked for (its --k, or the number of classes a labelled set gave it); "auto"
    for --k auto; None for clusterers that find the number themselves."""
    from ..cluster import CLUSTERERS

    c = config.get("cluster") or {}
    if c.get("k") == "auto":
        return "auto"
    algo = CLUSTERERS.get(c.get("method"))
    if algo is None or algo.k_param is None or not algo.needs_k(c.get("params") or {}):
        return None
    v = ((config.get("resolved") or {}).get("cluster_params") or {}).get(algo.k_param)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def candidate(run_id: str, run_dir: Path, n_clusters) -> "Candidate | None":
    """The run as a selection candidate, or None when its folder has no selection.parquet (a run made before
    gpuclust kept one, or with no UMAP space)."""
    import pandas as pd

    from ..select import Candidate

    path = run_dir / "selection.parquet"
    if not path.is_file():
        return None
    try:
        frame = pd.read_parquet(path, columns=["row", "label_pred", "silhouette"])
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError) as exc:
        log.warning("sweep: run %s: cannot read its selection.parquet (%s); left out of the label-free pick", run_id,
                    type(exc).__name__)
        return None
    n = int(n_clusters) if isinstance(n_clusters, (int, float)) and not isinstance(n_clusters, bool) else None
    return Candidate(run_id, frame["row"].to_numpy(), frame["label_pred"].to_numpy(), frame["silhouette"].to_numpy(),
                     n, asked_k(config))


def label_free(out: Path, rows: list[dict], runs: dict[str, Run], varied: list[str]) -> dict[str, dict | None]:
    """{dataset spec: the pick's best.json entry, or None when no run can be scored}, over the ok rows."""
    picks = {}
    for spec in dict.fromkeys(run.cfg.data.spec for run in runs.values()):
        ok = [r for r in rows if r.get("status") == "ok" and runs[r["run"]].cfg.data.spec == spec]
        picks[spec] = _pick_dataset(out, ok, runs, varied)
    return picks


def _pick_dataset(out: Path, ok: list[dict], runs: dict[str, Run], varied: list[str]) -> dict | None:
    from ..select import pick

    cands, unscored = [], []
    for r in ok:
        c = candidate(r["run"], out / runs[r["run"]].dir, r.get("n_clusters"))
        (cands if c is not None else unscored).append(c if c is not None else r["run"])
    if not cands:
        return None
    try:
        p = pick(cands)
    except UserError as exc:  # runs over different rows of one dataset spec (another --limit, say)
        log.warning("sweep: no label-free pick: %s", exc)
        return None
    doc = p.to_dict()
    if unscored:
        doc["notes"].append(f"not scored (no selection.parquet: made before gpuclust kept one, or no UMAP space): "
                            f"{', '.join(unscored)}")
    by_id = {r["run"]: r for r in ok}
    run = runs[p.id]
    doc.update(name=run.label(varied), run_dir=run.dir, n_clusters=by_id[p.id].get("n_clusters"),
               runner_up_name=None if p.runner_up is None else runs[p.runner_up].label(varied))
    for entry in doc["runs"]:
        entry["name"], entry["run_dir"] = runs[entry["run"]].label(varied), runs[entry["run"]].dir
        entry["n_clusters"] = by_id[entry["run"]].get("n_clusters")
        if by_id[entry["run"]].get("ami") is not None:
            entry["ami"] = by_id[entry["run"]]["ami"]
    amis = [r["ami"] for r in ok if isinstance(r.get("ami"), (int, float))]
    if amis and isinstance(by_id[p.id].get("ami"), (int, float)):
        best = max(amis)
        doc.update(ami=by_id[p.id]["ami"], best_ami=best, ami_lost=round(best - by_id[p.id]["ami"], 4))
    return doc


def pick_line(doc: dict) -> str:
    """One line for the console: the pick, its confidence and, with labels, the AMI it lost."""
    conf = f"confidence {doc['confidence']:.2f}" + ("" if doc.get("margin") is None else f", margin {doc['margin']}")
    band = "" if doc["k"] is None else f", runs within 20% of k={doc['k']} first"
    text = (f"label-free pick ({doc['criterion']}{band}): run {doc['run']} ({doc['name']}), "
            f"{doc['n_clusters']} clusters, {conf}")
    if doc.get("ami_lost") is not None:
        text += f"; AMI {doc['ami']:.4f}, best run {doc['best_ami']:.4f} (lost {doc['ami_lost']:.4f})"
    if doc["low_confidence"]:
        text += (f"\n  LOW CONFIDENCE: the runner-up, run {doc['runner_up']} ({doc['runner_up_name']}), is about as "
                 "good without labels; look at both reports")
    return text + "".join(f"\n  note: {n}" for n in doc.get("notes", []))
