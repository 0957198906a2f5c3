"""Benchmark of the carried candidates (``flags.carried_candidates``): what one class pays.

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_carried.py --json bench_carried.json

(with ``PYTHONPATH=.`` from the repository root, or spray installed). For each case
``N×SIDE`` (default 2000×32 and 2000×224: a class is scored on at most ``score_max_samples``,
2 000, samples): N random RGB images of SIDE × SIDE pixels in memory with random relevance maps
(their mean over 20 × 20 cells as the relevance features), and the groups that a class
without a suspect passes through :func:`spray.verdict.carried.carried_group`: one per window
cut, 2 × ``window_sweep_eigenvectors`` (20 in the preset ``followed``), random groups of 5–50 %
of the class here (each one's
:meth:`~spray.verdict.patterns.InputPatterns.aligned_agreement`: the members' template where
their relevance peaks, every sample's best match, the agreement and every sample's distance).
``carried_cpu_seconds``: all of them with the class's prepared images kept between groups
(:meth:`~spray.verdict.patterns.InputPatterns._prepared`), ``carried_cold_cpu_seconds``: each
on a fresh copy of the class's patterns (nothing kept, as before the images were kept).
``analysis_cpu_seconds``: the class's analysis (:func:`spray.analysis.analyze.analyze` of the
relevance features with the preset's sections, no embedding), for scale. The transplant
test of the groups (forward passes of the user's model) is not included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def measure(n: int, side: int, groups: int) -> dict:
    """CPU seconds of the carried groups of ``groups`` cuts in a class of ``n`` images."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.carried import carried_group
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.result import ClusterEvidence
    from spray.verdict.score import flag_params

    rng = np.random.default_rng(0)
    pipe = load_pipeline("followed")
    params = flag_params(pipe)
    x = rng.random((n, 3, side, side), dtype=np.float32)
    maps = rng.random((n, side, side), dtype=np.float32)
    feats = preprocess(maps, pipe["preprocess"])
    cuts = []
    for size in np.linspace(0.05 * n, 0.5 * n, groups).astype(int):
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=size, replace=False)] = True
        cuts.append(ClusterEvidence.of(mask, cut_graph="windows"))
    row = {"n": n, "side": side, "groups": groups}
    for name, fresh in (("carried", False), ("carried_cold", True)):
        patterns = InputPatterns.of(x, pipe["preprocess"], maps=maps)
        cpu = time.process_time()
        for cut in cuts:
            carried_group(cut, feats, InputPatterns.of(x, pipe["preprocess"], maps=maps)
                          if fresh else patterns, params)
        row[f"{name}_cpu_seconds"] = round(time.process_time() - cpu, 3)
    cpu = time.process_time()
    analyze(feats, pipeline=pipe, embed=False)
    row["analysis_cpu_seconds"] = round(time.process_time() - cpu, 3)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["2000x32", "2000x224"], metavar="NxSIDE")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for case in args.cases:
        n, side = (int(v) for v in case.split("x"))
        rows.append(measure(n, side, args.groups))
        r = rows[-1]
        print(f"n = {n}, {side}×{side} RGB, {r['groups']} groups: {r['carried_cpu_seconds']:.2f}"
              f" CPU s ({r['carried_cold_cpu_seconds']:.2f} without keeping the prepared "
              f"images); the analysis {r['analysis_cpu_seconds']:.2f} CPU s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "OMP_NUM_THREADS=1 python tests/benchmarks/bench_carried.py --json FILE",
            "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
