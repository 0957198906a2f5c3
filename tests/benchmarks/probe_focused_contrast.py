"""Probe (measured, not built): a *focused* relevance conductance, the kNN graph of the relevance
features restricted to a group's footprint cells, for planted oracle groups, planted-class
clusters and clean clusters, against a per-class null of random subsets of the same size
(docs/verdict-eval.md, "A focused contrast for frames").

    OMP_NUM_THREADS=1 python tests/benchmarks/probe_focused_contrast.py OUT.jsonl CACHE \\
        CLASS|all DRAW [DRAW ...] [--oracle-only]
    python tests/benchmarks/probe_focused_summary.py DIR   # DIR holds planted.jsonl, clean.jsonl

``CACHE`` is a setting's cache of ``eval_clever_hans.py``; one JSON line per group.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from eval_clever_hans import draw  # noqa: E402

from spray.analysis.analyze import analyze  # noqa: E402
from spray.analysis.preprocess import preprocess  # noqa: E402
from spray.config.presets import load_pipeline  # noqa: E402
from spray.verdict.evidence import ClassGraphs, top_cells, without_cells  # noqa: E402
from spray.verdict.graphs import knn_graph, mask_conductance  # noqa: E402
from spray.verdict.score import flag_params  # noqa: E402

N_NULL = 20
FLOOR = 1e-3


def lg(a, b):
    return math.log(max(a, FLOOR) / max(b, FLOOR))


class Focus:
    def __init__(self, graphs: ClassGraphs, feats, inputs, aff):
        self.g, self.F, self.X, self.aff = graphs, feats, inputs, aff
        self.F64 = np.asarray(feats, np.float64)
        self.X64 = np.asarray(inputs, np.float64)

    def diff(self, A, mask):
        return A[mask].mean(0) - A[~mask].mean(0)

    def measure(self, mask, full=False):
        """Focused quantities of ``mask`` (two footprints: relevance hot spot, input footprint)."""
        g = self.g
        d_rel = top_cells(np.abs(self.diff(self.F64, mask)), g.mask_area)   # = graphs.hot_spot
        d_in = g.input_footprint(mask)
        out = {}
        for name, D in (("rel", d_rel), ("in", d_in)):
            phi_f = mask_conductance(*knn_graph(self.F[:, D], self.aff), mask)
            Xm, _ = without_cells(self.X, D, g.normalize)
            phi_i = mask_conductance(*knn_graph(Xm, self.aff), mask)
            # renormalised focused features (each row's footprint cells to unit l1) as a variant
            Fd = self.F[:, D].astype(np.float32)
            s = np.abs(Fd).sum(1, keepdims=True)
            Fd = Fd / np.where(s > 0, s, 1.0)
            phi_fn = mask_conductance(*knn_graph(Fd, self.aff), mask)
            out[name] = {"phi_relf": phi_f, "phi_relf_norm": phi_fn, "phi_in_woD": phi_i,
                         "fc": lg(phi_i, phi_f), "fc_norm": lg(phi_i, phi_fn),
                         "n_cells": int(len(D))}
            if full:
                out[name]["cells"] = sorted(int(c) for c in D)
        return out


def null_stats(focus: Focus, n, size, rng):
    rows = []
    for _ in range(N_NULL):
        m = np.zeros(n, bool)
        m[rng.choice(n, size, replace=False)] = True
        rows.append(focus.measure(m))
    return rows


def summarize_against(val, null_vals, higher_is_sep):
    """z and rank of ``val`` against the null; both oriented so that larger = more separated."""
    v = np.asarray(null_vals, float)
    mu, sd = float(v.mean()), float(v.std(ddof=1))
    z = (val - mu) / sd if sd > 0 else float("nan")
    if not higher_is_sep:
        z = -z
        rank = float((v >= val).mean())   # share of null less separated (larger φ)
    else:
        rank = float((v <= val).mean())
    return {"z": z, "rank": rank, "null_mean": mu, "null_sd": sd}


def class_rows(path, data, c, d, pipe, params, aff_override, oracle_only, rng_seed):
    t0 = time.process_time()
    sub = draw(data, 300, 10_000 + d)
    sel = np.flatnonzero(sub["labels"] == c)
    feats = preprocess(sub["relevance"][sel].astype(np.float32), pipe["preprocess"])
    inputs = preprocess(sub["inputs"][sel].astype(np.float32), pipe["preprocess"])
    truth = sub["poisoned"][sel].astype(bool)
    res = analyze(feats, pipeline=pipe, embed=False)
    graphs = ClassGraphs.build(res, inputs, pipe, params, feats)
    t_an = time.process_time() - t0
    aff = dict(graphs.affinity, **aff_override)
    focus = Focus(graphs, feats, inputs, aff)
    n = len(sel)
    groups = []
    if truth.any():
        groups.append(("oracle", -2, truth.copy()))
    if not oracle_only:
        for lab in np.unique(res.labels):
            m = res.labels == lab
            if 0.02 <= m.sum() / n <= 0.5 and m.sum() < n:
                groups.append(("cluster", int(lab), m))
    rows, nulls = [], {}
    t_focus = 0.0
    for kind, gid, m in groups:
        phi_rel = mask_conductance(graphs.W, graphs.degree, m)
        phi_in = graphs.input_conductance(graphs.inputs_for(m), m)
        rand = graphs.input_randomness(m)
        t1 = time.process_time()
        foc = focus.measure(m, full=(kind == "oracle"))
        size = int(m.sum())
        if size not in nulls:
            rng = np.random.default_rng([rng_seed, d, c, size])
            nulls[size] = null_stats(focus, n, size, rng)
        nl = nulls[size]
        for name in ("rel", "in"):
            f = foc[name]
            f["null_phi_relf"] = summarize_against(
                math.log(max(f["phi_relf"], FLOOR)),
                [math.log(max(r[name]["phi_relf"], FLOOR)) for r in nl], False)
            f["null_phi_relf_norm"] = summarize_against(
                math.log(max(f["phi_relf_norm"], FLOOR)),
                [math.log(max(r[name]["phi_relf_norm"], FLOOR)) for r in nl], False)
            f["null_fc"] = summarize_against(f["fc"], [r[name]["fc"] for r in nl], True)
            f["null_fc_norm"] = summarize_against(f["fc_norm"], [r[name]["fc_norm"] for r in nl],
                                                  True)
            f["fc_cal"] = f["fc"] - f["null_fc"]["null_mean"]
            f["fc_norm_cal"] = f["fc_norm"] - f["null_fc_norm"]["null_mean"]
        t_focus += time.process_time() - t1
        row = {"cache": path.split("/")[-1], "class": int(c), "draw": int(d), "n": n,
               "k": int(res.k), "K": int(res.n_clusters), "kind": kind, "id": gid,
               "size": size, "fraction": round(size / n, 4),
               "planted_in_group": int((truth & m).sum()), "n_planted": int(truth.sum()),
               "phi_rel": phi_rel, "phi_in": phi_in, "contrast": lg(phi_in, phi_rel),
               "randomness": rand, "focus": foc}
        rows.append(row)
    cpu = {"analysis": t_an, "focus_and_null": t_focus, "n_groups": len(groups),
           "n_null_sizes": len(nulls)}
    for r in rows:
        r["cpu_class"] = cpu
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("cache")
    ap.add_argument("cls")
    ap.add_argument("draws", type=int, nargs="+")
    ap.add_argument("--oracle-only", action="store_true")
    args = ap.parse_args()
    pipe = load_pipeline("spray-default")
    params = flag_params(pipe)
    data = dict(np.load(args.cache))
    classes = (np.unique(data["labels"]).tolist() if args.cls == "all" else [int(args.cls)])
    with open(args.out, "a") as fh:
        for d in args.draws:
            for c in classes:
                rows = class_rows(args.cache, data, c, d, pipe, params, {"n_jobs": 1},
                                  args.oracle_only, 7)
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
                fh.flush()
                cp = rows[0]["cpu_class"] if rows else {}
                print(f"{args.cache.split('/')[-1]} d{d} c{c}: {len(rows)} groups, cpu {cp}",
                      flush=True)


if __name__ == "__main__":
    main()
