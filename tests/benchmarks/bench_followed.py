"""Benchmark of the preset ``followed``'s verdict on a trained model: its cost against the
analysis of the same class.

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_followed.py --sizes 10000 100000 --json FILE

(with ``PYTHONPATH=.`` from the repository root, or spray installed). ``bench_flags.py``
measures the default rule on synthetic features; the preset ``followed`` (window cuts, member
steps by what the members agree on, carried candidates and the transplant test) needs the
images, their relevance maps and the model, so it is measured here on the evaluation's scenes
(``eval_data.make_scenes``, generator ``natf``): a CNN trained with ``adam`` on scenes whose
class ``--planted`` carries a colour patch on ``--fraction`` of its training images
(``eval_models.collect_scenes``, the evaluation's setting ``natf.cnn.adam:C:patch:P:SEED``),
and for each size n one class of n new scenes of that label (disjoint glyphs), explained with
the evaluation's LRP composite. Two cases per n: ``planted`` (the patch on ``--fraction`` of
the n scenes, as in training: a flagged class, the dear case — transplant tests and their
confirmation) and ``clean`` (the same scenes without it). For each case the CPU seconds (this
process, one thread; each size's analysis is run once untimed first) of the analysis
(:func:`spray.analysis.analyze.analyze` of the relevance features, no embedding) and of the
verdict as a run computes it (the inputs' features and
patterns, :func:`spray.verdict.score.clever_hans_score` with the transplant test's model) with
the preset ``followed``, the same without ``recurring_candidates`` (what that step costs) and,
for scale, ``spray-default``; the images the model was asked
about (the transplant tests' forward passes) and the CPU seconds spent in the model's forward
passes (a cost of the user's model: on a GPU, or with a larger model, it differs most); the
flag and the suspect's precision and recall.
``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SETTING = "natf.cnn.adam:{planted}:patch:{fraction}:{seed}"
COMMAND = "OMP_NUM_THREADS=1 python tests/benchmarks/bench_followed.py --sizes {sizes} --json FILE"
#: the columns of the table in docs/verdict.md (``tables.py``)
COLUMNS = ["n", "case", "analysis_cpu_s", "score_cpu_s_followed", "model_cpu_s",
           "followed / analysis", "without the model / analysis",
           "score_cpu_s_without_recurring", "score_cpu_s_default", "asked_images",
           "flagged_followed", "precision", "recall"]
#: the verdicts measured: the preset, the preset without ``recurring_candidates`` (what that
#: step costs, in the same process), and the default rule for scale
VARIANTS = (("followed", "followed", {}),
            ("without_recurring", "followed", {"recurring_candidates": False}),
            ("default", "spray-default", {}))


def trained(planted: int, fraction: float, seed: int) -> dict:
    """The evaluation's model and test scenes of ``natf.cnn.adam:planted:patch:fraction:seed``."""
    from eval_clever_hans import parse_setting
    from eval_models import collect_scenes

    return collect_scenes(parse_setting(SETTING.format(planted=planted, fraction=fraction,
                                                       seed=seed)), None)


def big_class(label: int, n: int, fraction: float, seed: int):
    """``n`` new scenes of ``label`` (the explained glyphs), and the same with the patch on
    ``fraction`` of them: ``(clean, stamped, stamped rows mask)``."""
    from eval_data import GENERATORS, _glyphs, _split, plant_rgb

    spec = GENERATORS["natf"]
    _, _, glyphs, types = _glyphs(spec.source)
    sizes = [n if c == label else 0 for c in range(spec.n_classes())]
    rng = np.random.default_rng([seed, 7])
    x, _, obj, _ = _split(spec, glyphs, types, sizes, rng)
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, size=int(round(fraction * n)), replace=False)] = True
    stamped = x.copy()
    stamped[chosen], _ = plant_rgb(x[chosen], "patch", rng, obj[chosen])
    return x, stamped, chosen


def explain(model: torch.nn.Module, x: np.ndarray, label: int) -> np.ndarray:
    """Relevance maps of ``x`` for ``label`` as the evaluation makes them (channels summed)."""
    from eval_models import COMPOSITES

    from spray.lrp import attribute

    y = torch.full((250,), label, dtype=torch.long)
    return np.concatenate([
        attribute(model, torch.as_tensor(x[s:s + 250]), y[:len(x[s:s + 250])],
                  composite=COMPOSITES["cnn"]).detach().numpy().sum(axis=1)
        for s in range(0, len(x), 250)]).astype(np.float32)


def measure(model, others: dict, x: np.ndarray, maps: np.ndarray, truth: np.ndarray,
            label: int) -> dict:
    """CPU seconds of the analysis and of the verdicts of one class (``x``, ``maps``)."""
    from eval_clever_hans import model_test_of

    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.score import clever_hans_score

    data = {"inputs": np.concatenate([others["inputs"], x]),
            "labels": np.concatenate([others["labels"], np.full(len(x), label)]),
            "relevance": np.concatenate([others["relevance"], maps])}
    sel = np.arange(len(others["labels"]), len(data["labels"]))
    asked = [0, 0.0, 0.0]                     # images, CPU seconds in the model, start

    def before(module, inputs):
        asked[2] = time.process_time()

    def after(module, inputs, output):
        asked[0] += len(inputs[0])
        asked[1] += time.process_time() - asked[2]

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    row: dict = {}
    try:
        for key, name, flags in VARIANTS:
            pipe = load_pipeline(name, overrides={"embedding": {"method": "none"},
                                                  "flags": flags})
            feats = preprocess(maps, pipe["preprocess"])
            if key == "followed":
                cpu = time.process_time()
                result = analyze(feats, pipeline=pipe, embed=False)
                row["analysis_cpu_s"] = time.process_time() - cpu
                row["K"] = int(result.n_clusters)
            asked[:2] = [0, 0.0]
            cpu = time.process_time()
            verdict = clever_hans_score(
                result, preprocess(x, pipe["preprocess"]), pipe, features=feats,
                patterns=InputPatterns.of(x, pipe["preprocess"], maps=maps),
                model_test=model_test_of(model, data, sel, label, pipe))
            row[f"score_cpu_s_{key}"] = time.process_time() - cpu
            row[f"flagged_{key}"] = bool(verdict["flagged"])
            if key == "followed":
                row["asked_images"] = asked[0]
                row["model_cpu_s"] = asked[1]
                row.update(suspect_overlap(verdict, truth))
    finally:
        for hook in hooks:
            hook.remove()
    row["followed / analysis"] = row["score_cpu_s_followed"] / row["analysis_cpu_s"]
    row["without the model / analysis"] = ((row["score_cpu_s_followed"] - row["model_cpu_s"])
                                           / row["analysis_cpu_s"])
    return row


def warm_up(maps: np.ndarray) -> None:
    """One untimed analysis of a class of this size (the kNN index of classes above
    ``affinity.approximate_above`` compiles its kernels once per process: tens of CPU seconds
    that the first class of that size would otherwise pay)."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline

    pipe = load_pipeline("followed", overrides={"embedding": {"method": "none"}})
    analyze(preprocess(maps, pipe["preprocess"]), pipeline=pipe, embed=False)


def suspect_overlap(verdict: dict, truth: np.ndarray) -> dict:
    """Precision and recall of the reported suspects against the stamped samples."""
    from eval_clever_hans import overlap

    reported = verdict.get("suspect_clusters") or []
    if not reported or not truth.any():
        return {"precision": None, "recall": None}
    precision, recall = overlap(verdict["labels"], reported, truth)
    return {"precision": round(precision, 3), "recall": round(recall, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--planted", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=90)
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    built = trained(args.planted, args.fraction, args.seed)
    model = built["model"].eval()
    keep = built["labels"] != args.planted                 # the other classes' test scenes
    others = {k: built[k][keep] for k in ("inputs", "labels", "relevance")}
    print("| n | case | analysis (CPU s) | followed (CPU s) | of which the model | followed /"
          " analysis | without the model / analysis | without recurring (CPU s) | default"
          " (CPU s) | images asked | flagged | P / R |")
    print("|---" * 12 + "|")
    rows = []
    for n in args.sizes:
        clean, stamped, truth = big_class(args.planted, n, args.fraction, args.seed)
        for case, x, t in (("planted", stamped, truth), ("clean", clean, np.zeros(n, bool))):
            maps = explain(model, x, args.planted)
            if case == "planted":
                warm_up(maps)
            r = {"n": n, "case": case, **measure(model, others, x, maps, t, args.planted)}
            rows.append(r)
            pr = "—" if r["precision"] is None else f"{r['precision']:.2f} / {r['recall']:.2f}"
            print(f"| {n} | {case} | {r['analysis_cpu_s']:.1f} | {r['score_cpu_s_followed']:.1f}"
                  f" | {r['model_cpu_s']:.1f} | {r['followed / analysis']:.2f}"
                  f" | {r['without the model / analysis']:.2f}"
                  f" | {r['score_cpu_s_without_recurring']:.1f} | {r['score_cpu_s_default']:.1f}"
                  f" | {r['asked_images']} | {r['flagged_followed']} | {pr} |", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({
                    "command": COMMAND.format(sizes=" ".join(map(str, args.sizes))),
                    "setting": SETTING.format(planted=args.planted, fraction=args.fraction,
                                              seed=args.seed),
                    "model_accuracy": round(float(built["accuracy"]), 3),
                    "columns": COLUMNS, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
