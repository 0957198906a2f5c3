"""Whole classes scored in full and on capped subsamples (``score_max_samples``).

    python tests/benchmarks/eval_score_cap.py --cap 300 --out FILE CACHE/*.npz
    python tests/benchmarks/eval_score_cap.py --cap 2000 3000 4000 --whole 100000 CACHE/*.npz

Each argument is a cached setting of ``eval_clever_hans.py`` (``OUT/cache/*.npz``). Every class
is analysed once (``spray-default``, no t-SNE) and scored once with ``flags.score_max_samples``
at ``--whole`` (default 10⁹: every class scored whole) and once
with each ``--cap``, so that classes above the cap are scored on a stratified subsample of that
many. ``--class-size N`` scores a random draw of N samples of each larger class (seeded by
``--seed``) instead of the whole class. Per class it prints and writes (``--out``, JSON) the
scores and their CPU seconds and, where the class holds stamped samples and a suspect, the
suspects' precision and recall over the class; at the end, per cap, how often its flags agree
with the whole score's and the highest score of the classes without a planted artefact.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_clever_hans import edge_features  # noqa: E402


def _planted(name: str) -> int | None:
    """The planted class of a cached setting's file name (None for a clean model)."""
    found = re.search(r"-c(\d+)-", name)
    return None if "clean" in name or found is None else int(found.group(1))


def _pipelines(caps: list[int], whole: int | None) -> dict:
    """The pipeline of each scoring: ``full`` (``whole``, or the preset's cap) and ``cap<N>``."""
    from spray.config.presets import load_pipeline

    def pipe(cap):
        flags = {} if cap is None else {"score_max_samples": cap}
        return load_pipeline("spray-default", overrides={"embedding": {"method": "none"},
                                                         "flags": flags})

    return {"full": pipe(whole), **{f"cap{c}": pipe(c) for c in caps}}


def _classes(data: dict, size: int | None, seed: int):
    """``(class, rows)`` of every class: all its rows, or a draw of ``size`` of them."""
    rng = np.random.default_rng(seed)
    for c in np.unique(data["labels"]).tolist():
        sel = np.flatnonzero(data["labels"] == c)
        if size is not None and len(sel) > size:
            sel = np.sort(rng.choice(sel, size=size, replace=False))
        yield c, sel


def score_both(path: Path, caps: list[int], whole: int | None = None,
               size: int | None = None, seed: int = 0) -> list[dict]:
    """The scores of every class of one cached setting: whole and with each cap."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.verdict.score import score_class

    pipes = _pipelines(caps, whole)
    pipe = pipes["full"]
    data = dict(np.load(path, allow_pickle=True))
    planted = _planted(path.stem)
    rows = []
    for c, sel in _classes(data, size, seed):
        maps = data["relevance"][sel].astype(np.float32)
        inputs = data["inputs"][sel].astype(np.float32)
        feats = preprocess(maps, pipe["preprocess"])
        in_feats = preprocess(inputs, pipe["preprocess"])
        edges = edge_features(inputs, pipe)
        t = time.process_time()
        result = analyze(feats, pipeline=pipe, embed=False)
        truth = data["poisoned"][sel]
        row = {"setting": path.stem, "class": c, "n": int(len(sel)), "planted": planted == c,
               "analysis_cpu_s": round(time.process_time() - t, 2)}
        for tag, p in pipes.items():
            t = time.process_time()
            v = score_class(result, in_feats, p, features=feats, edge_features=edges)
            row[f"{tag}_cpu_s"] = round(time.process_time() - t, 2)
            row[tag] = round(v.score, 3)
            members = np.isin(v.labels, v.suspect_clusters)
            if truth.any() and members.any():
                hit = int((members & truth).sum())
                row[f"{tag}_precision"] = round(hit / int(members.sum()), 3)
                row[f"{tag}_recall"] = round(hit / int(truth.sum()), 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def summary(rows: list[dict], cap: int, threshold: float = 1.7) -> str:
    """Flag agreement and the extremes of the whole and the ``cap`` scores."""
    tag = f"cap{cap}"
    capped = [r for r in rows if r["n"] > cap]
    agree = sum((r["full"] >= threshold) == (r[tag] >= threshold) for r in capped)
    other = [r for r in capped if not r["planted"]]
    top = (max(r["full"] for r in other), max(r[tag] for r in other)) if other else (None,) * 2
    diff = np.mean([abs(r["full"] - r[tag]) for r in capped]) if capped else float("nan")
    return (f"{len(capped)} of {len(rows)} classes above the cap {cap}: flags agree in {agree}; "
            f"mean |score difference| {diff:.2f}; highest score of the other classes "
            f"{top[0]} whole, {top[1]} capped; CPU s of the scores "
            f"{sum(r['full_cpu_s'] for r in rows):.1f} whole, "
            f"{sum(r[tag + '_cpu_s'] for r in rows):.1f} capped, "
            f"analysis {sum(r['analysis_cpu_s'] for r in rows):.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caches", nargs="+", type=Path)
    ap.add_argument("--cap", type=int, nargs="+", required=True)
    ap.add_argument("--whole", type=int, default=10**9,
                    help="score_max_samples of the whole score (default: above every class)")
    ap.add_argument("--class-size", type=int, help="score a draw of this many per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = [r for path in args.caches
            for r in score_both(path, args.cap, args.whole, args.class_size, args.seed)]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    for cap in args.cap:
        print(summary(rows, cap))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
