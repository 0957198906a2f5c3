"""Benchmark of the Clever-Hans score: its cost against the analysis, with and without the input mask.

    python tests/benchmarks/bench_flags.py --sizes 1000 10000 100000

(with ``PYTHONPATH=.`` from the repository root, or spray installed). For each n: relevance
features from the planted mixture of ``bench_spectral.make_features`` (8 groups, d = 400),
inputs from an independent mixture of the same kind (another seed), the ``spray-default``
analysis without t-SNE, then ``clever_hans_score`` with the defaults (``input_mask_area: 0.1``:
input kNN graphs per candidate, on the class and on every bootstrap resample; halves of every
cluster), with ``input_mask_area: 0`` (one input graph shared by all candidates) and with
``bisect_clusters: false`` (no halves). Prints wall times in seconds and the number of
candidate clusters; the score's cost grows with the number of candidates, the analysis' does
not.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spectral import make_features  # noqa: E402


def run(n: int) -> dict:
    from spray.analysis.analyze import analyze
    from spray.config.presets import load_pipeline
    from spray.verdict.score import clever_hans_score

    pipe = load_pipeline("spray-default", overrides={"embedding": {"method": "none"}})
    feats, _ = make_features(n, seed=0)
    inputs, _ = make_features(n, seed=1)
    t0 = time.perf_counter()
    result = analyze(feats, pipeline=pipe, embed=False)
    row = {"n": n, "analysis_s": time.perf_counter() - t0, "K": int(result.n_clusters)}
    for name, flags in (("mask", {}), ("whole", {"input_mask_area": 0.0}),
                        ("no_halves", {"bisect_clusters": False})):
        p = load_pipeline("spray-default", overrides={"embedding": {"method": "none"},
                                                       "flags": flags})
        t0 = time.perf_counter()
        v = clever_hans_score(result, inputs, p, features=feats)
        row[f"score_s_{name}"] = time.perf_counter() - t0
        if name == "no_halves":
            row["candidates"] = sum("contrast" in c for c in v["clusters"])
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    args = ap.parse_args(argv)
    print("| n | analysis (s) | K | candidate clusters | score (s) | score, whole inputs (s) "
          "| score without halves (s) |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        r = run(n)
        print(f"| {n} | {r['analysis_s']:.1f} | {r['K']} | {r['candidates']} | "
              f"{r['score_s_mask']:.1f} | {r['score_s_whole']:.1f} | {r['score_s_no_halves']:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
