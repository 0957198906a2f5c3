"""Why the verdict misses a planted group in a draw: is it separated, found, scored?

    python tests/benchmarks/verdict_diagnose.py OUT/cache/SETTING.npz CLASS DRAW [DRAW ...]
    ... --pipeline pipelines/fft.yaml   # another preset or YAML (default spray-default)

For each draw (the same draws as ``eval_clever_hans.py --draws``, 300 per class): the
analysis' K and cluster sizes, how the planted samples fall into the clusters, the evidence
measured on the planted group itself (an oracle candidate), the best Jaccard of a sweep cut
with it, and the class score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_clever_hans import draw  # noqa: E402


def diagnose(data: dict, c: int, d: int, size: int, pipeline: str = "spray-default") -> str:
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.candidates import sweep_cuts
    from spray.verdict.evidence import ClassGraphs, measure
    from spray.verdict.result import ClusterEvidence
    from spray.verdict.score import flag_params, score_class

    pipe = load_pipeline(pipeline)
    params = flag_params(pipe)
    sub = draw(data, size, 10_000 + d)
    sel = np.flatnonzero(sub["labels"] == c)
    feats = preprocess(sub["relevance"][sel].astype(np.float32), pipe["preprocess"])
    inputs = preprocess(sub["inputs"][sel].astype(np.float32), pipe["preprocess"])
    truth = sub["poisoned"][sel]
    res = analyze(feats, pipeline=pipe, embed=False)
    graphs = ClassGraphs.build(res, inputs, pipe, params, feats)
    oracle = measure(ClusterEvidence.of(truth.copy(), id=-2), graphs)
    ids = np.unique(res.labels)
    sizes = {int(k): int((res.labels == k).sum()) for k in ids}
    held = {int(k): int((truth & (res.labels == k)).sum()) for k in ids}
    cuts = sweep_cuts(graphs.W, graphs.degree, res.eigenvectors, params.sweep_eigenvectors,
                      params)
    jac = max(((m.mask & truth).sum() / (m.mask | truth).sum() for m in cuts), default=0.0)
    v = score_class(res, inputs, pipe, feats)
    return (f"draw {d}: n={len(sel)} planted={int(truth.sum())} K={res.n_clusters} "
            f"sizes={sizes} planted per cluster={held}; planted group: "
            f"phi_rel={oracle.conductance_relevance} phi_in={oracle.conductance_input} "
            f"contrast={oracle.contrast} randomness={oracle.input_randomness}; "
            f"best sweep-cut Jaccard {jac:.2f}; class score {v.score}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("cls", type=int)
    ap.add_argument("draws", type=int, nargs="+")
    ap.add_argument("--draw-size", type=int, default=300)
    ap.add_argument("--pipeline", default="spray-default", help="preset name or YAML file")
    args = ap.parse_args(argv)
    data = dict(np.load(args.cache))
    for d in args.draws:
        print(diagnose(data, args.cls, d, args.draw_size, args.pipeline), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
