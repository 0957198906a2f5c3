"""Does moving a candidate group's pieces onto other classes' images turn the model? A probe.

For every draw of every cached setting whose model weights were kept
(``eval_clever_hans.py --build-only --keep-models``), each class is scored with ``--pipeline``
and the candidates the rule measured (every graph: clusters, halves, groups of other K, sweep,
edge and window cuts; identical groups once) are recorded with their plain score (contrast
less penalties, an upper bound of the stable score). The best ``--top`` by plain score, the
best ``--top-windows`` window cuts and the verdict's suspect (else its best cluster) get the
transplant test of :mod:`spray.verdict.transplant` with the setting's model: the share of
other classes' images turned to the class by the members' pieces and by the rest's, at the
members' place and at each donor's peak window.

A candidate is *planted* when at least half of it carries the planted artefact, *false* when
its class has none (a clean model's, or another class of a planted model's).

    python tests/benchmarks/probe_transplant.py --cache-from DIR --pipeline PIPE.yaml \
        --draws 10 --json CANDIDATES.json [SETTING-NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_clever_hans import draw, kept_model  # noqa: E402
from probe_window_cuts import scored_recording  # noqa: E402


def predictor(model: torch.nn.Module):
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(x)).argmax(1).numpy()
    return predict


def scored_candidates(maps, inputs, pipe: dict) -> tuple[dict, list]:
    """The class's verdict and every group the rule measured (``(entry, plain score)``, each
    group once, at its best plain score)."""
    from spray.verdict.candidates import mask_key

    seen = {}

    def record(entry):
        if entry.contrast is None:
            return
        key, value = mask_key(entry.mask), float(entry.contrast - entry.penalty)
        if key not in seen or seen[key][1] < value:
            seen[key] = (entry, value)

    verdict, _ = scored_recording(maps, inputs, pipe, record)
    return verdict, list(seen.values())


def probe_class(predict, maps, inputs, truth, targets, c, pipe, args, seed) -> list[dict]:
    """The transplant tests of one class's chosen candidates."""
    from spray.verdict.transplant import transplant_test

    verdict, found = scored_candidates(maps, inputs, pipe)
    found.sort(key=lambda ev: -ev[1])
    chosen = [(e, v, "top") for e, v in found[:args.top]]
    chosen += [(e, v, "window") for e, v in
               [ev for ev in found if ev[0].cut_graph == "windows"][:args.top_windows]]
    labels = np.asarray(verdict["labels"])
    best = verdict.get("suspect_cluster")
    best = verdict.get("candidate_cluster") if best is None else best
    groups = [(e.mask, v, src, e.cut_graph) for e, v, src in chosen]
    if best is not None:
        groups.append((labels == best, verdict["score"], "verdict", None))
    out = []
    for mask, value, src, graph in groups:
        if mask.sum() < 2 or mask.all():
            continue
        tests = transplant_test(predict, inputs, maps, mask, targets, c, side=args.side,
                                area=args.area, pairs=args.pairs, seed=seed)
        hit = int((mask & truth).sum())
        out.append({"source": src, "graph": graph, "plain_score": round(value, 4),
                    "class_score": verdict["score"], "flagged": verdict["flagged"],
                    "size": int(mask.sum()), "planted_in": hit,
                    "precision": hit / int(mask.sum()),
                    "recall": hit / int(truth.sum()) if truth.any() else None,
                    **{f"{t.region}_{k}": v for t in tests
                       for k, v in t.to_dict().items() if k != "region"}})
    return out


def main(argv=None) -> int:
    from eval_clever_hans import parse_setting, read_settings, setting_name

    from spray.config.presets import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-from", required=True, metavar="DIR")
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--draw-size", type=int, default=300)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--top-windows", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--side", type=float, default=0.22)
    ap.add_argument("--area", type=float, default=0.1)
    ap.add_argument("--json", required=True, metavar="FILE")
    ap.add_argument("names", nargs="*", help="setting names (default: every cached one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_pipeline(args.pipeline)
    root = Path(args.cache_from)
    settings = {setting_name(s): s for s in map(parse_setting,
                                                read_settings(root / "settings.txt"))}
    names = args.names or list(settings)
    rows = []
    for name in names:
        weights = root / "cache" / f"{name}.pt"
        if not weights.is_file():
            print(f"{name}: no kept weights, skipped", flush=True)
            continue
        data = dict(np.load(root / "cache" / f"{name}.npz"))
        x_all = data["inputs"].astype(np.float32)
        model = kept_model(settings[name], weights, 1 if x_all.ndim == 3 else x_all.shape[1])
        predict = predictor(model)
        for d in range(args.draws):
            sub = draw(data, args.draw_size, seed=10_000 + d)
            x = sub["inputs"].astype(np.float32)
            for c in np.unique(sub["labels"]).tolist():
                sel = np.flatnonzero(sub["labels"] == c)
                pool = np.flatnonzero((sub["labels"] != c) & (sub["prediction"] != c))
                truth = sub["poisoned"][sel]
                found = probe_class(predict, sub["relevance"][sel].astype(np.float32), x[sel],
                                    truth, x[pool], c, pipe, args, seed=d * 100 + c)
                rows += [{"setting": name, "class": c, "draw": d,
                          "n_planted": int(truth.sum()), **r} for r in found]
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{name}: {sum(r['setting'] == name for r in rows)} candidates tested",
              flush=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
