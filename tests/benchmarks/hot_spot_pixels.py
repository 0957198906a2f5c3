"""The hot-spot separation pooled and in the pixels, on an evaluation's cached class draws.

For every class draw asked for, the analysis' clusters, the stamped group itself (a planted
class) and two random subsets of a fifth of the class are measured three ways at their hot
spot (the ``input_mask_area`` of cells where their relevance differs most):

- ``pooled``: the rule's hot-spot separation on the inputs as the graphs see them (summed over
  the colour channels, pooled to the feature grid, normalized;
  :func:`spray.verdict.evidence.hot_spot_side`), measured in sample;
- ``pixels``: :meth:`spray.verdict.patterns.InputPatterns.agreement_separation` at each
  ``--spreads`` value (what half the members agree on, pixel and colour, tells the other half
  from the rest; out of sample; a half counts where it agrees on at least
  ``hot_spot_agreed_share`` of the values).

``record`` writes one JSON line per group; ``summary`` counts, per kind of group, how the
measures spread and how many reach the hot-spot knee, and how much the larger of pooled and
pixels would lower the hot-spot penalty (the default rule's knee and weight) (``--json``: a tables.py table)::

    python tests/benchmarks/hot_spot_pixels.py record --cache-from runs/R \\
        --setting NAME --draws 0,1 --classes 3 --out GROUPS.jsonl
    python tests/benchmarks/hot_spot_pixels.py summary GROUPS.jsonl [--json FILE]

``NAME`` is a setting of the build in ``runs/R`` (``eval_clever_hans.py --build-only``); draws
are those of ``eval_clever_hans.py --draws`` (seed 10 000 + draw, 300 per class).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_clever_hans as E  # noqa: E402

ARTEFACTS = ("stripes", "text", "frame", "logo", "patch", "square", "checker", "topline")


def _groups(labels: np.ndarray, truth: np.ndarray, rng: np.random.Generator):
    """The analysis' clusters, the stamped group and two random fifths of the class."""
    out = [(f"cluster {c}", labels == c) for c in np.unique(labels)]
    if truth.any():
        out.append(("stamped", truth.copy()))
    for i in range(2):
        r = np.zeros(len(labels), bool)
        r[rng.choice(len(labels), max(6, len(labels) // 5), replace=False)] = True
        out.append((f"random {i}", r))
    return out


def record(args) -> int:
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import FlagsSection, load_pipeline
    from spray.verdict.evidence import auc, difference, hot_spot_side, top_cells
    from spray.verdict.patterns import InputPatterns

    pipe = load_pipeline(args.pipeline)
    flags = FlagsSection.coerce(pipe["flags"])
    area = float(flags.input_mask_area)
    data = dict(np.load(Path(args.cache_from) / "cache" / f"{args.setting}.npz"))
    with open(args.out, "a") as out:
        for d in map(int, args.draws.split(",")):
            dd = E.draw(data, args.draw_size, 10_000 + d)
            for c in map(int, args.classes.split(",")):
                sel = np.flatnonzero(dd["labels"] == c)
                maps = dd["relevance"][sel].astype(np.float32)
                inputs = dd["inputs"][sel].astype(np.float32)
                truth = dd["poisoned"][sel].astype(bool)
                feats = preprocess(maps, pipe["preprocess"])
                pooled_in = preprocess(inputs, pipe["preprocess"])
                labels = np.asarray(analyze(feats, pipeline=pipe, embed=False).labels)
                patterns = InputPatterns.of(inputs, pipe["preprocess"], maps=maps)
                rng = np.random.default_rng(1000 * d + c)
                for name, mask in _groups(labels, truth, rng):
                    if not 0.02 <= mask.mean() <= 0.6 or mask.sum() < 5:
                        continue
                    side = hot_spot_side(pooled_in, feats, mask, area)
                    cells = top_cells(np.abs(difference(feats, mask)), area)
                    out.write(json.dumps({
                        "setting": args.setting, "draw": d, "class": c, "group": name,
                        "size": int(mask.sum()), "planted": bool(truth.any()),
                        "precision": float((mask & truth).mean() / mask.mean())
                        if truth.any() else None,
                        "pooled": 0.5 if side is None else auc(side, mask),
                        "pixels": {str(s): patterns.agreement_separation(
                            cells, mask, s, 10 ** 6, seed=7, least=flags.hot_spot_agreed_share)
                            for s in args.spreads}}) + "\n")
                print(f"{args.setting} draw {d} class {c}", flush=True)
    return 0


def kind(row: dict) -> str:
    """``clean cluster``, ``random subset``, or the artefact and ``stamped``, ``cluster
    (mostly stamped)`` or ``cluster (mostly not)`` for a planted class."""
    if row["group"].startswith("random"):
        return "random subset"
    if not row["planted"]:
        return "clean cluster"
    art = next((a for a in ARTEFACTS if f"-{a}-" in row["setting"]), "other")
    if row["group"] == "stamped":
        return f"{art}: stamped"
    return f"{art}: cluster, " + ("mostly stamped" if row["precision"] >= 0.5 else "mostly not")


def summary(args) -> int:
    from spray.config.presets import FlagsSection

    rows = [json.loads(line) for line in Path(args.records).read_text().splitlines()]
    flags = FlagsSection()
    knee, weight = flags.hot_spot_knee, flags.hot_spot_weight

    def penalty(s):
        return weight * max(0.0, knee - s)

    by = defaultdict(list)
    for r in rows:
        by[kind(r)].append(r)
    table = []
    for k in sorted(by):
        rs = by[k]
        pooled = np.array([r["pooled"] for r in rs])
        pix = np.array([0.5 if r["pixels"][args.spread] is None else r["pixels"][args.spread]
                        for r in rs])
        lift = np.array([penalty(p) - penalty(max(p, q)) for p, q in zip(pooled, pix)])
        table.append({
            "groups": k, "n": len(rs),
            "pooled median (min–max)": f"{np.median(pooled):.2f} ({pooled.min():.2f}–"
                                       f"{pooled.max():.2f})",
            "pixels median (min–max)": f"{np.median(pix):.2f} ({pix.min():.2f}–{pix.max():.2f})",
            f"pooled ≥ {knee}": int((pooled >= knee).sum()),
            f"larger ≥ {knee}": int((np.maximum(pooled, pix) >= knee).sum()),
            "penalty lowered, max": round(float(lift.max()), 2)})
    for t in table:
        print(" | ".join(str(v) for v in t.values()))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python tests/benchmarks/hot_spot_pixels.py summary GROUPS.jsonl "
                       f"--spread {args.spread} --json FILE",
            "rows": table}, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("--cache-from", required=True)
    r.add_argument("--setting", required=True)
    r.add_argument("--draws", default="0")
    r.add_argument("--classes", required=True)
    r.add_argument("--draw-size", type=int, default=300)
    r.add_argument("--pipeline", default="followed")
    r.add_argument("--spreads", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    r.add_argument("--out", required=True)
    s = sub.add_parser("summary")
    s.add_argument("records")
    s.add_argument("--spread", default="0.5")
    s.add_argument("--json")
    args = ap.parse_args(argv)
    return record(args) if args.command == "record" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
