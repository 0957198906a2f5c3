"""Probe the inputs of flagged suspects: what tells the stamped samples outside a suspect from
the other samples outside it (docs/verdict-eval.md, "Members by their pattern").

    python tests/benchmarks/probe_patterns.py CACHE.npz CLASS DRAWS [--reach R] [--moved]

``CACHE.npz`` is a setting's cache of ``eval_clever_hans.py`` (relevance, inputs, ground
truth), ``DRAWS`` comma-separated draw numbers (the draws of ``--draws``, 300 per class). For
every suspect of the class (``spray-default``, scored without the raw inputs, so that nobody has
joined by their pattern yet) it prints the ROC AUC
of stamped against unstamped among the samples outside every suspect of three measures at the
suspect's hot spot:

- ``pooled``: the inputs as the rule's features see them, projected on the line between the
  medians of the rest and the group (:func:`spray.verdict.evidence.hot_spot_side`);
- ``pixels``: the same projection of the raw pixels there, every colour channel;
- ``pattern``: the pattern correlation (:class:`spray.verdict.patterns.InputPatterns`).

and the stamped and unstamped samples outside above 0 and at or above the members' lower fence
(Q1 − R × IQR, ``--reach``, 1 as the rule's ``trim_fence_iqr``) of each (for ``pattern``: the
samples that join by their pattern), and their totals over the draws.

With ``--moved``, a pattern that moves: the members' 7 × 7 raw window where their mean share of
|relevance| is highest, aligned on each member's best match nearby, is matched at every place
of every image; a sample outside joins at reach ``r`` when its best match is within the upper
fence (Q3 + r × IQR) of the members' distances and the share of its |relevance| in the matched
window is at or above their lower fence. Prints precision and recall of the suspects with
those samples, for r = 0, 0.5, 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_clever_hans import draw, edge_features  # noqa: E402

WINDOW = 7


def _verdict(maps, inputs, pipe):
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.verdict.score import clever_hans_score

    feats = preprocess(maps, pipe["preprocess"])
    in_feats = preprocess(inputs, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    # without the raw inputs: the suspects before any sample joins them by its pattern
    v = clever_hans_score(result, in_feats, pipe, features=feats,
                          edge_features=edge_features(inputs, pipe))
    return v, feats, in_feats


def _projection(V: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from spray.verdict.evidence import _spread

    V = V / _spread(V[~mask])
    group, rest = np.median(V[mask], axis=0), np.median(V[~mask], axis=0)
    line = group - rest
    return (V - (group + rest) / 2) @ line / float(line @ line)


def measures(inputs, feats, in_feats, mask, pipe) -> dict[str, np.ndarray]:
    """The three measures of the module docstring for the group ``mask``."""
    from spray.analysis.preprocess import cell_pixels
    from spray.verdict.evidence import difference, hot_spot_side, top_cells
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.score import flag_params

    area = flag_params(pipe).input_mask_area
    cells = top_cells(np.abs(difference(feats, mask)), area)
    x = inputs if inputs.ndim == 4 else inputs[:, None]
    pixels = cell_pixels(cells, pipe["preprocess"]["pool"], *x.shape[-2:])
    return {"pooled": hot_spot_side(in_feats, feats, mask, area),
            "pixels": _projection(x[:, :, pixels].reshape(len(x), -1).astype(np.float64), mask),
            "pattern": InputPatterns.of(inputs, pipe["preprocess"]).correlation(cells, mask,
                                                                                 2000)}


def moved(maps, inputs, mask, truth, suspects) -> list[str]:
    """The moving-pattern match of the module docstring, one line per reach."""
    x = (inputs if inputs.ndim == 4 else inputs[:, None]).astype(np.float32)
    n = len(x)
    win = sliding_window_view(x, (WINDOW, WINDOW), axis=(2, 3))
    win = win.transpose(0, 2, 3, 1, 4, 5).reshape(n, win.shape[2], win.shape[3], -1)
    a = np.abs(maps.astype(np.float32))
    share = sliding_window_view(a, (WINDOW, WINDOW), axis=(1, 2)).sum((-1, -2))
    share = share / np.maximum(a.sum((1, 2)), 1e-12)[:, None, None]
    gy, gx = np.unravel_index(share[mask].mean(0).argmax(), share.shape[1:])
    template = np.median(win[mask, gy, gx], axis=0)
    for _ in range(3):                  # align every member on its best match, then again
        dist = np.sqrt(((win - template) ** 2).mean(-1)).reshape(n, -1)
        best = dist.argmin(1)
        by, bx = np.unravel_index(best, share.shape[1:])
        template = np.median(win[mask, by[mask], bx[mask]], axis=0)
    dist = np.sqrt(((win - template) ** 2).mean(-1)).reshape(n, -1)
    best = dist.argmin(1)
    d = dist[np.arange(n), best]
    s = share.reshape(n, -1)[np.arange(n), best]
    lines = []
    for reach in (0.0, 0.5, 1.0):
        q1, q3 = np.percentile(d[mask], [25, 75])
        p1, p3 = np.percentile(s[mask], [25, 75])
        join = ~suspects & (d <= q3 + reach * (q3 - q1)) & (s >= p1 - reach * (p3 - p1))
        new = suspects | join
        lines.append(f"    moved, reach {reach}: {int((join & truth).sum())} stamped + "
                     f"{int((join & ~truth).sum())} unstamped join; P/R "
                     f"{(new & truth).sum() / new.sum():.2f}/{(new & truth).sum() / truth.sum():.2f}")
    return lines


def main(argv=None) -> int:
    from spray.config.presets import load_pipeline
    from spray.verdict.evidence import auc
    from spray.verdict.members import lower_fence

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache")
    ap.add_argument("cls", type=int)
    ap.add_argument("draws")
    ap.add_argument("--reach", type=float, default=1.0)
    ap.add_argument("--moved", action="store_true")
    args = ap.parse_args(argv)
    pipe = load_pipeline("spray-default")
    data = dict(np.load(args.cache))
    totals: dict[str, list[int]] = {}
    for d in (int(t) for t in args.draws.split(",")):
        sub = draw(data, 300, 10_000 + d)
        sel = np.flatnonzero(sub["labels"] == args.cls)
        maps, inputs = sub["relevance"][sel], sub["inputs"][sel]
        truth = sub["poisoned"][sel]
        v, feats, in_feats = _verdict(maps, inputs, pipe)
        labels = np.asarray(v["labels"])
        suspects = np.isin(labels, v["suspect_clusters"])
        print(f"draw {d}: score {v['score']:.2f}, suspects {v['suspect_clusters']}, "
              f"{int((suspects & truth).sum())} of {int(truth.sum())} stamped in them")
        for cid in v["suspect_clusters"]:
            mask = labels == cid
            out = ~suspects
            parts = []
            for name, m in measures(inputs, feats, in_feats, mask, pipe).items():
                inside = out & (m > 0) & (m >= lower_fence(m[mask], args.reach))
                t = totals.setdefault(name, [0, 0])
                t[0] += int((inside & truth).sum())
                t[1] += int((inside & ~truth).sum())
                a = auc(m[out], truth[out]) if truth[out].any() and (~truth[out]).any() else None
                parts.append(f"{name} AUC {'—' if a is None else f'{a:.3f}'} fence "
                             f"{int((inside & truth).sum())}+{int((inside & ~truth).sum())}")
            print(f"  suspect {cid} ({int(mask.sum())} samples): " + "; ".join(parts))
            if args.moved:
                print("\n".join(moved(maps, inputs, mask, truth, suspects)))
    print("at or above the fence, stamped + unstamped: "
          + "; ".join(f"{k} {a}+{b}" for k, (a, b) in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
