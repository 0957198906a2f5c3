"""Probe (measured, not built): the guard of the last member step with a wider reach for the
samples outside (docs/verdict-eval.md, "Members matched anywhere", "Still open").

    OMP_NUM_THREADS=1 python tests/benchmarks/probe_guard.py OUT.jsonl DRAWS CACHE@CLASS ...

For each flagged draw of each setting's planted class: the verdict before the last member step
(without relevance maps), then the last step with the members' lower fence (reach 1) compared
with the upper fence of the samples outside at reach 1 (the rule), 1.5, 2 and 3. One JSON line
per draw: suspect precision, recall and unstamped members per variant.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_clever_hans import draw, edge_features  # noqa: E402

from spray.analysis.analyze import analyze  # noqa: E402
from spray.analysis.preprocess import preprocess  # noqa: E402
from spray.config.presets import load_pipeline  # noqa: E402
from spray.verdict import members as M  # noqa: E402
from spray.verdict.evidence import difference  # noqa: E402
from spray.verdict.patterns import InputPatterns  # noqa: E402
from spray.verdict.score import clever_hans_score  # noqa: E402

GUARDS = {"G0 reach 1": 1.0, "G1 reach 1.5": 1.5, "G2 reach 2": 2.0, "G3 reach 3": 3.0}


def before_last_step(data: dict, c: int, d: int, pipe: dict):
    """The planted class of draw ``d``: its verdict's labels and suspects without the last
    member step, its features, inputs, maps and ground truth."""
    sub = draw(data, 300, 10_000 + d)
    sel = np.flatnonzero(sub["labels"] == c)
    maps, inputs, truth = sub["relevance"][sel], sub["inputs"][sel], sub["poisoned"][sel]
    feats = preprocess(maps, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    v = clever_hans_score(result, preprocess(inputs, pipe["preprocess"]), pipe, features=feats,
                          edge_features=edge_features(inputs, pipe),
                          patterns=InputPatterns.of(inputs, pipe["preprocess"]))
    return np.asarray(v["labels"]), v["suspect_clusters"], feats, inputs, maps, truth


def last_step(labels, suspects, feats, patterns, reach: float) -> np.ndarray:
    """The last member step with the samples outside's upper fence at ``reach``."""
    labels = labels.copy()
    for s in suspects:
        mask, outside = labels == s, ~np.isin(labels, suspects)
        if not mask.any() or not outside.any():
            continue
        r = patterns.peak_correlation(difference(feats, mask), mask, 2000)
        if r is None:
            continue
        fence = M.lower_fence(r[mask], 1.0)
        if fence >= M.upper_fence(r[outside], reach):
            labels[outside & (r >= fence)] = s
    return labels


def main() -> None:
    pipe = load_pipeline("spray-default")
    with open(sys.argv[1], "a") as out:
        for spec in sys.argv[3:]:
            cache, c = spec.split("@")
            data = dict(np.load(cache, allow_pickle=True))
            for d in range(int(sys.argv[2])):
                labels, suspects, feats, inputs, maps, truth = before_last_step(
                    data, int(c), d, pipe)
                if not suspects:
                    continue
                patterns = InputPatterns.of(inputs, pipe["preprocess"], maps=maps)
                rec = {"setting": Path(cache).name, "draw": d}
                for name, reach in GUARDS.items():
                    inside = np.isin(last_step(labels, suspects, feats, patterns, reach),
                                     suspects)
                    hit = int((inside & truth).sum())
                    rec[name] = [round(hit / max(1, int(inside.sum())), 3),
                                 round(hit / max(1, int(truth.sum())), 3),
                                 int((inside & ~truth).sum())]
                out.write(json.dumps(rec) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
