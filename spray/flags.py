"""Clever-Hans score of a class: does its relevance split into a group the inputs do not explain?

Rule (``flags.score: input-contrast``): cluster the class on its relevance eigenvectors; for each
cluster holding between ``min_cluster_fraction`` and ``max_cluster_fraction`` of the class,
compute its *conductance* (weight of the edges leaving it over its volume) in the relevance kNN
graph and in a kNN graph built the same way on the raw inputs of the class. A group that the
model treats alike (low relevance conductance) although the inputs are not alike (high input
conductance) is a strategy of the model, not of the data. The score is

    score = max over clusters of log(max(φ_input, floor) / max(φ_relevance, floor))

and the class is flagged when ``score >= threshold``; the arg-max cluster is the suspect.
Natural sub-groups (e.g. bags with and without handles) are separated in the inputs too, so
their ratio stays small. See README "Clever-Hans score" for the validation.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp


def conductance(W: sp.csr_matrix, members: np.ndarray) -> float:
    """Edge weight leaving ``members`` over the smaller of the two volumes (0 for a component)."""
    mask = np.zeros(W.shape[0], dtype=bool)
    mask[members] = True
    degree = np.asarray(W.sum(axis=1)).ravel()
    vol_in, vol_out = degree[mask].sum(), degree[~mask].sum()
    if min(vol_in, vol_out) <= 0:
        return 0.0
    cut = W[mask][:, ~mask].sum()
    return float(cut / min(vol_in, vol_out))


def clever_hans_score(result, input_features: np.ndarray, pipeline: dict) -> dict:
    """Score a class from its analysis result and the preprocessed raw inputs of its samples."""
    from spray.affinity import knn_affinity

    params = pipeline.get("flags", {})
    floor = float(params.get("conductance_floor", 1e-3))
    lo, hi = float(params.get("min_cluster_fraction", 0.02)), float(params.get("max_cluster_fraction", 0.5))
    threshold = float(params.get("threshold", 2.0))
    labels = np.asarray(result.labels)
    n = len(labels)
    affinity_params = dict(pipeline["affinity"])
    affinity_params["k"] = int(result.k)
    W_input = knn_affinity(input_features, affinity_params)
    clusters = []
    for cid in np.unique(labels):
        members = np.flatnonzero(labels == cid)
        frac = len(members) / n
        entry = {"id": int(cid), "size": int(len(members)), "fraction": round(frac, 4)}
        if lo <= frac <= hi:
            phi_rel = conductance(result.affinity, members)
            phi_in = conductance(W_input, members)
            entry.update({"conductance_relevance": round(phi_rel, 6),
                          "conductance_input": round(phi_in, 6),
                          "score": round(math.log(max(phi_in, floor) / max(phi_rel, floor)), 4)})
        clusters.append(entry)
    scored = [c for c in clusters if "score" in c]
    best = max(scored, key=lambda c: c["score"]) if scored else None
    score = best["score"] if best else 0.0
    flagged = bool(best is not None and score >= threshold)
    return {"rule": "input-contrast", "score": float(score), "threshold": threshold,
            "flagged": flagged, "suspect_cluster": best["id"] if flagged else None,
            "candidate_cluster": best["id"] if best else None, "clusters": clusters}
