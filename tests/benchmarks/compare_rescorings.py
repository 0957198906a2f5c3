"""Compare two rescorings of the same cached draws (a rule before and after a change).

    python tests/benchmarks/compare_rescorings.py BEFORE AFTER [BEFORE2 AFTER2 ...] [--json F]

Each BEFORE/AFTER is an ``--out`` directory of ``eval_clever_hans.py --cache-from CACHE
--rescore --draws N`` run on the same cache by the two rules (e.g. two worktrees). Prints, and
with ``--json`` writes: the class checks whose score or flag differ, and per planted setting the
draws flagged and detected (flagged, suspect precision and recall ≥ 0.9) before and after,
the lowest precision and median recall of the flagged draws, the planted scores (min / p10 /
median) before and after, and how many stamped and unstamped samples the suspects gained or
lost in the draws flagged both times (from each draw's precision, recall and planted count);
over all checks, the highest score of the classes without a planted artefact (clean models'
and the other classes) before and after, and how many of them changed score or flag. A change
to who is reported (``spray.verdict.members``) must leave every score alone; a change to the
score is judged by the detections it gains and the non-planted scores it raises. Scores are
the gate's (``eval_summary.gate``: with the transplant test, the best cluster the model was not
shown to ignore).
With ``--table-json F`` the settings that changed are written as a table for docs/
(``tables.py``). With ``--common`` the two may hold different class checks (one rescored with
``--only``): only
the checks and draws both hold are compared, and their number is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_summary import gate  # noqa: E402

DETECT = 0.9


def _load(out: Path) -> tuple[list[dict], list[dict], float]:
    summary = json.loads((out / "draws_summary.json").read_text())
    return json.loads((out / "draws.json").read_text()), summary["draws"], summary["threshold"]


def _members(draw: dict) -> tuple[int, int]:
    """(stamped, unstamped) samples in the suspects of a planted draw."""
    hits = round(draw["recall"] * draw["n_planted"])
    size = round(hits / draw["precision"]) if draw["precision"] else 0
    return hits, size - hits


def _flagged(draw: dict, threshold: float) -> bool:
    """A draw's planted class flagged: at the threshold, or below it followed by the model."""
    return draw["planted_score"] >= threshold or bool(draw.get("followed_below"))


def compare(before: Path, after: Path, common: bool = False) -> dict:
    """The comparison of one pair of rescorings (see the module docstring); with ``common``,
    of the class checks and draws both hold."""
    rows_a, draws_a, threshold = _load(before)
    rows_b, draws_b, _ = _load(after)
    key = lambda r: (r["setting"], r["draw"], r["class"])   # noqa: E731
    a, b = {key(r): r for r in rows_a}, {key(r): r for r in rows_b}
    if a.keys() != b.keys() and not common:
        raise SystemExit(f"{before} and {after} hold different class checks")
    keys = [k for k in a if k in b]
    if not keys:
        raise SystemExit(f"{before} and {after} hold no class check in common")
    a, b = {k: a[k] for k in keys}, {k: b[k] for k in keys}
    if common:
        shared = {(d["setting"], d["draw"]) for d in draws_a} & {(d["setting"], d["draw"])
                                                                 for d in draws_b}
        draws_a, draws_b = ([d for d in ds if (d["setting"], d["draw"]) in shared]
                            for ds in (draws_a, draws_b))
    changed = [k for k in a if a[k]["score"] != b[k]["score"] or gate(a[k]) != gate(b[k])
               or a[k]["flagged"] != b[k]["flagged"]]
    settings: dict[str, dict] = {}
    by_draw = {(d["setting"], d["draw"]): d for d in draws_b}
    if by_draw.keys() != {(d["setting"], d["draw"]) for d in draws_a}:
        raise SystemExit(f"{before} and {after} hold different draws")
    draws_b = [by_draw[d["setting"], d["draw"]] for d in draws_a]   # in the first's order
    for x, y in zip(draws_a, draws_b):
        if "precision" not in x:
            continue
        s = settings.setdefault(x["setting"], {"draws": 0, "flagged": [0, 0], "detected": [0, 0],
                                               "lowest_precision": [None, None],
                                               "recalls": [[], []], "scores": [[], []],
                                               "gained": [0, 0]})
        s["draws"] += 1
        for i, d in enumerate((x, y)):
            s["scores"][i].append(d["planted_score"])
            if not _flagged(d, threshold):
                continue
            s["flagged"][i] += 1
            s["detected"][i] += d["precision"] >= DETECT and d["recall"] >= DETECT
            low = s["lowest_precision"][i]
            s["lowest_precision"][i] = d["precision"] if low is None else min(low, d["precision"])
            s["recalls"][i].append(d["recall"])
        if _flagged(x, threshold) and _flagged(y, threshold):
            (sa, ua), (sb, ub) = _members(x), _members(y)
            s["gained"][0] += sb - sa
            s["gained"][1] += ub - ua
    for s in settings.values():
        s["median_recall"] = [float(np.median(r)) if r else None for r in s.pop("recalls")]
        s["planted_scores"] = [_quantiles(v) for v in s.pop("scores")]
    others = [k for k in keys if not a[k]["planted"]]
    return {"before": str(before), "after": str(after), "checks": len(a),
            "score_or_flag_changed": len(changed), "settings": settings,
            "non_planted": {"checks": len(others),
                            "changed": sum(k in set(changed) for k in others),
                            "highest": [max((gate(a[k]) for k in others), default=None),
                                        max((gate(b[k]) for k in others), default=None)],
                            "flagged": [sum(a[k]["flagged"] for k in others),
                                        sum(b[k]["flagged"] for k in others)]}}


def _quantiles(scores: list[float]) -> dict:
    """Min, 10th percentile and median of a setting's planted scores."""
    v = np.asarray(scores, dtype=float)
    return {"min": round(float(v.min()), 2), "p10": round(float(np.percentile(v, 10)), 2),
            "median": round(float(np.median(v)), 2)}


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"


COLUMNS = ["setting", "flagged", "detected", "planted scores min / p10 / median", "lowest P",
           "median R", "stamped / unstamped gained"]


def setting_rows(results: list[dict], changed_only: bool = False) -> list[dict]:
    """One row per planted setting of :func:`compare` results (``COLUMNS``, each cell "before
    → after"); with ``changed_only``, the settings whose flags, detections, lowest precision,
    median recall or members changed."""
    rows = []
    for res in results:
        for name, s in res["settings"].items():
            moved = (s["flagged"][0] != s["flagged"][1] or s["detected"][0] != s["detected"][1]
                     or s["lowest_precision"][0] != s["lowest_precision"][1]
                     or s["median_recall"][0] != s["median_recall"][1] or any(s["gained"]))
            if changed_only and not moved:
                continue
            q = [f"{p['min']:.2f} / {p['p10']:.2f} / {p['median']:.2f}"
                 for p in s["planted_scores"]]
            rows.append(dict(zip(COLUMNS, [
                name, f"{s['flagged'][0]} → {s['flagged'][1]} of {s['draws']}",
                f"{s['detected'][0]} → {s['detected'][1]}", f"{q[0]} → {q[1]}",
                f"{_fmt(s['lowest_precision'][0])} → {_fmt(s['lowest_precision'][1])}",
                f"{_fmt(s['median_recall'][0])} → {_fmt(s['median_recall'][1])}",
                f"{s['gained'][0]} / {s['gained'][1]}"])))
    return rows


def summary(results: list[dict]) -> str:
    """The class checks compared, and what changed of the non-planted ones."""
    checks = sum(r["checks"] for r in results)
    changed = sum(r["score_or_flag_changed"] for r in results)
    others = [r["non_planted"] for r in results]
    highest = [max((o["highest"][i] for o in others if o["highest"][i] is not None),
                   default=None) for i in (0, 1)]
    return (f"{checks} class checks; score or flag changed in {changed}. "
            f"Non-planted checks: {sum(o['checks'] for o in others)}, changed "
            f"{sum(o['changed'] for o in others)}, flagged "
            f"{sum(o['flagged'][0] for o in others)} → "
            f"{sum(o['flagged'][1] for o in others)}, highest score {_fmt(highest[0])} → "
            f"{_fmt(highest[1])}.")


def table(results: list[dict]) -> str:
    """A Markdown table of :func:`compare` results."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in setting_rows(results)]
    return "\n".join(lines) + "\n\n" + summary(results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="BEFORE AFTER pairs of rescoring --out directories")
    ap.add_argument("--json", help="write the comparison here")
    ap.add_argument("--common", action="store_true",
                    help="compare only the class checks and draws both hold")
    ap.add_argument("--table-json",
                    help="write the settings that changed as a table for docs (tables.py)")
    args = ap.parse_args(argv)
    if len(args.dirs) % 2:
        ap.error("give BEFORE AFTER pairs")
    pairs = list(zip(args.dirs[::2], args.dirs[1::2]))
    results = [compare(Path(a), Path(b), args.common) for a, b in pairs]
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.table_json:
        spec = {"columns": COLUMNS, "rows": setting_rows(results, changed_only=True),
                "command": "python tests/benchmarks/compare_rescorings.py "
                           + " ".join(args.dirs) + (" --common" if args.common else "")
                           + " --table-json F"}
        Path(args.table_json).write_text(json.dumps(spec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
