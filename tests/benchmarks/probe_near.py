"""The candidates a rule tested below the threshold, with their members: a probe.

``eval_clever_hans.py`` keeps of each candidate tested below the threshold
(``flags.transplant_reach``) its score, size, decision and transplant tests, not its members.
This probe scores again every class draw of an evaluation's results that has such a record,
keeps the members, and writes one JSON line per tested candidate: its decision, the tests
(with the ``place`` region's ``agreed``, :func:`spray.verdict.transplant.place_agreement`), the
effect in units of the test's floored clustered error (``z_clustered``, what
``transplant_near_z`` bars), and its precision and recall against the stamped samples. The
summary then counts, per bar on ``z_clustered`` and on ``agreed``, which class draws would
promote a candidate — planted (precision ≥ 0.8), planted but imprecise, or without an artefact
— as the rule tests them (the first that passes; candidates after a promotion were not tested,
so only bars at least as strict as the records' decisions are exact for them)::

    python tests/benchmarks/probe_near.py record --cache-from CACHE --results RES \\
        --pipeline PIPE.yaml --out CANDIDATES.jsonl
    python tests/benchmarks/probe_near.py summary CANDIDATES.jsonl --z 3.5 3.0 2.5 \\
        --agreed 0 0.15

``RES`` is an ``--out`` folder of ``eval_clever_hans.py --draws N`` scored from ``CACHE``
with the same pipeline (its ``near_tested`` records say which class draws to score again).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_clever_hans as E  # noqa: E402


def z_clustered(test: dict, min_effect: float = 0.05) -> float:
    """A test's effect (a ``TransplantResult.to_dict()``) in units of the floored error that
    :func:`spray.verdict.transplant.shown_followed` bars (NaN without a finite error)."""
    from spray.verdict.transplant import TransplantResult, _floored

    r = TransplantResult(**{**test, "se": float("nan") if test.get("se") is None
                            else test["se"]})
    return r.effect / _floored(r, min_effect)


def agreed_of(record: dict) -> float | None:
    """The ``place`` region's agreement of a tested candidate (None where not measured)."""
    return next((t.get("agreed") for t in record["tests"] if t["region"] == "place"), None)


def kind(record: dict) -> str:
    """``planted`` (precision ≥ 0.8), ``imprecise`` (another planted candidate) or ``false``."""
    if not record["planted"]:
        return "false"
    return "planted" if (record["precision"] or 0) >= 0.8 else "imprecise"


def _class_verdict(setting, cache: Path, data: dict, pipe: dict, d: int, c: int, size: int):
    """The verdict of class ``c`` in draw ``d`` as ``eval_clever_hans.score_setting`` makes
    it, and the class's stamped samples."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.score import clever_hans_score

    model = E.tested_model(setting, cache, data, pipe)
    dd = E.draw(data, size, 10_000 + d)
    sel = np.flatnonzero(dd["labels"] == c)
    maps, inputs = dd["relevance"][sel], dd["inputs"][sel]
    feats = preprocess(maps, pipe["preprocess"])
    edges = E.edge_features(inputs, pipe)
    result = analyze(feats, pipeline=pipe, embed=False)
    more = {} if edges is None else {"edge_features": edges}
    verdict = clever_hans_score(result, preprocess(inputs, pipe["preprocess"]), pipe,
                                features=feats, **more,
                                patterns=InputPatterns.of(inputs, pipe["preprocess"], maps=maps),
                                model_test=E.model_test_of(model, dd, sel, c, pipe))
    return verdict, dd["poisoned"][sel]


def record(args) -> int:
    from spray.config.presets import load_pipeline

    pipe = load_pipeline(args.pipeline)
    cache_dir = Path(args.cache_from)
    settings = {E.setting_name(s): s for s in map(E.parse_setting, E.read_settings(
        cache_dir / "settings.txt"))}
    rows = json.loads((Path(args.results) / "draws.json").read_text())
    jobs = [(r["setting"], r["draw"], r["class"], r["planted"]) for r in rows
            if r.get("near_tested")]
    size = json.loads((Path(args.results) / "draws_summary.json").read_text())["draw_size"]
    with open(args.out, "a") as out:
        for name in dict.fromkeys(j[0] for j in jobs):
            cache = cache_dir / "cache" / f"{name}.npz"
            data = dict(np.load(cache))
            for key in ("relevance", "inputs"):
                data[key] = data[key].astype(np.float32)
            for _, d, c, planted in (j for j in jobs if j[0] == name):
                verdict, truth = _class_verdict(settings[name], cache, data, pipe, d, c, size)
                for t in verdict.get("near_tested") or []:
                    members = np.zeros(len(truth), bool)
                    members[t["members"]] = True
                    hit = int((members & truth).sum())
                    out.write(json.dumps({
                        "setting": name, "draw": d, "class": c, "planted": planted,
                        "score": t["score"], "size": t["size"], "decision": t["decision"],
                        "tests": t["tests"],
                        "z_clustered": max((z_clustered(x) for x in t["tests"]
                                            if x["effect"] >= 0.05), default=None),
                        "precision": hit / max(1, int(members.sum())) if truth.any() else None,
                        "recall": hit / int(truth.sum()) if truth.any() else None},
                        default=float) + "\n")
                print(f"{name} draw {d} class {c}: {len(verdict.get('near_tested') or [])} "
                      "tested", flush=True)
    return 0


def promotions(records: list[dict], z: float, agreed: float) -> Counter:
    """Class draws that would promote a candidate at these bars, by :func:`kind` (the first
    candidate of a class draw, in the order tested, with an effect ≥ 0.05 at ≥ ``z``
    clustered errors in some region and an agreement ≥ ``agreed``)."""
    by_class: dict[tuple, list[dict]] = {}
    for r in records:
        by_class.setdefault((r["setting"], r["draw"], r["class"]), []).append(r)
    out: Counter = Counter()
    for tested in by_class.values():
        for r in tested:
            a = agreed_of(r)
            if any(t["effect"] >= 0.05 and z_clustered(t) >= z for t in r["tests"]) and (
                    agreed <= 0 or (a is not None and a >= agreed)):
                out[kind(r)] += 1
                break
    return out


def summary(args) -> int:
    records = [json.loads(line) for line in Path(args.candidates).read_text().splitlines()]
    print(f"{len(records)} candidates tested in "
          f"{len({(r['setting'], r['draw'], r['class']) for r in records})} class draws; "
          f"decisions {dict(Counter(r['decision'] for r in records))}")
    for k in ("planted", "imprecise", "false"):
        values = [a for r in records if kind(r) == k and (a := agreed_of(r)) is not None]
        if values:
            print(f"agreed, {k}: min / median / max "
                  f"{min(values):.3f} / {float(np.median(values)):.3f} / {max(values):.3f}")
    print("| z bar | agreed bar | planted | imprecise | false |\n|---|---|---|---|---|")
    for a in args.agreed:
        for z in args.z:
            n = promotions(records, z, a)
            print(f"| {z} | {a} | {n['planted']} | {n['imprecise']} | {n['false']} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="score the tested class draws again, keep members")
    rec.add_argument("--cache-from", required=True, help="the evaluation's cache folder")
    rec.add_argument("--results", required=True, help="its --draws results folder")
    rec.add_argument("--pipeline", required=True, help="the pipeline it was scored with")
    rec.add_argument("--out", required=True, help="JSON lines (appended)")
    summ = sub.add_parser("summary", help="promotions per bar from the recorded candidates")
    summ.add_argument("candidates")
    summ.add_argument("--z", type=float, nargs="+", default=[3.5, 3.0, 2.5])
    summ.add_argument("--agreed", type=float, nargs="+", default=[0.0, 0.15])
    args = ap.parse_args(argv)
    return record(args) if args.command == "record" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
