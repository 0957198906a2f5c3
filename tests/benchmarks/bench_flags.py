"""Benchmark of the Clever-Hans score: its cost against the analysis of the same class.

    python tests/benchmarks/bench_flags.py --sizes 1000 10000 100000 --json bench_flags.json

(with ``PYTHONPATH=.`` from the repository root, or spray installed). For each n: relevance
features from the planted mixture of ``bench_spectral.make_features`` (8 groups, d = 400),
inputs from an independent mixture of the same kind (another seed), the ``spray-default``
analysis without t-SNE, then ``clever_hans_score`` as a run computes it: with the edge energy of
the inputs (each row taken as a 20 × 20 image, :func:`spray.analysis.preprocess.edge_energy`,
preprocessed like the relevance) as ``edge_features``, with the defaults and with the variants
named by ``--variants``: ``whole`` (``input_mask_area: 0``: one input graph shared by all
candidates), ``no_halves`` (``bisect_clusters: false``), ``no_sweeps``
(``sweep_eigenvectors: 0``), ``no_edges`` (no ``edge_features``: no edge penalty, so most
clusters of the planted mixture reach the threshold and are resampled — 5 of 8 at n = 10 000,
the dearest case; the edges of the independent inputs lower every cluster by about 4, and only
the best cluster is resampled), ``cap_1000`` (``score_max_samples: 1000``: the evidence measured
on a stratified subsample of 1 000; the default, 2 000, scores larger classes on 2 000),
``cap_10000`` (``score_max_samples: 10000``, the default before 2026-12-02: n ≤ 10 000 whole),
``edge_cuts`` (``edge_sweep_eigenvectors: 10``: sweep cuts of the edge graph as candidates
too; the default since 2026-12-03), ``no_edge_cuts`` (``edge_sweep_eigenvectors: 0``: the
default before).
Prints wall and CPU times in seconds (CPU: of this process, all threads), the number of
candidate clusters and the ratio score / analysis; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_spectral import make_features  # noqa: E402

VARIANTS = {"default": {}, "whole": {"input_mask_area": 0.0},
            "no_halves": {"bisect_clusters": False}, "no_sweeps": {"sweep_eigenvectors": 0},
            "no_edges": {}, "cap_1000": {"score_max_samples": 1000},
            "cap_10000": {"score_max_samples": 10000},
            "edge_cuts": {"edge_sweep_eigenvectors": 10},
            "no_edge_cuts": {"edge_sweep_eigenvectors": 0}}


def edge_inputs(inputs: np.ndarray, preprocess_params: dict) -> np.ndarray:
    """The edge energy of the bench's inputs (rows as square images), preprocessed."""
    from spray.analysis.preprocess import edge_energy, preprocess

    n, d = inputs.shape
    side = int(round(np.sqrt(d)))
    return preprocess(edge_energy(inputs.reshape(n, side, side)), preprocess_params)


def run(n: int, variants: list[str]) -> dict:
    import torch  # noqa: F401  (loaded in every spray run, for the model; not timed here)

    from spray.analysis.analyze import analyze
    from spray.config.presets import load_pipeline
    from spray.verdict.score import clever_hans_score

    pipe = load_pipeline("spray-default", overrides={"embedding": {"method": "none"}})
    feats, _ = make_features(n, seed=0)
    inputs, _ = make_features(n, seed=1)
    edges = edge_inputs(inputs, pipe["preprocess"])
    t0, c0 = time.perf_counter(), time.process_time()
    result = analyze(feats, pipeline=pipe, embed=False)
    row = {"n": n, "analysis_s": time.perf_counter() - t0,
           "analysis_cpu_s": time.process_time() - c0, "K": int(result.n_clusters)}
    for name in ["default", *variants]:
        p = load_pipeline("spray-default", overrides={"embedding": {"method": "none"},
                                                       "flags": VARIANTS[name]})
        t0, c0 = time.perf_counter(), time.process_time()
        v = clever_hans_score(result, inputs, p, features=feats,
                              edge_features=None if name == "no_edges" else edges)
        row[f"score_s_{name}"] = time.perf_counter() - t0
        row[f"score_cpu_s_{name}"] = time.process_time() - c0
        if name == "default":
            row["candidates"] = sum("contrast" in c for c in v["clusters"])
            row["score"] = v["score"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--variants", nargs="*", default=["whole", "no_halves", "no_sweeps"],
                    choices=[v for v in VARIANTS if v != "default"])
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    cols = ["default", *args.variants]
    print("| n | analysis (s) | K | candidate clusters | "
          + " | ".join(f"score, {c} (s)" for c in cols) + " | score / analysis | CPU |")
    print("|---" * (6 + len(cols)) + "|")
    rows = []
    for n in args.sizes:
        r = run(n, args.variants)
        rows.append(r)
        print(f"| {n} | {r['analysis_s']:.1f} | {r['K']} | {r['candidates']} | "
              + " | ".join(f"{r[f'score_s_{c}']:.1f}" for c in cols)
              + f" | {r['score_s_default'] / r['analysis_s']:.1f}"
              + f" | {r['score_cpu_s_default'] / r['analysis_cpu_s']:.1f} |", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
