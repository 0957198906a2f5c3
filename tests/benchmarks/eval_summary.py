"""Margin summary of the Clever-Hans evaluation's draws (``eval_clever_hans.py --draws N``).

Per data generator and architecture: the planted settings the model relies on (stamping the
artefact on other-class test images turns at least ``RELIED`` more of them to the planted class
than on the clean models of the same generator, architecture and recipe), their detections
(score at the threshold and suspect precision and recall ≥ 0.9) over the draws, the distribution
of their planted scores (min, 10th percentile, median), the planted settings the model does not
rely on (reported apart, not counted as misses) and the highest score over every clean-model and
non-planted class check.

:func:`criteria` scores the same draws against the verdict's acceptance criteria (detection of
relied-on settings with p ≥ 5 % on every generator, the planted 10th percentile and the highest
clean score each at least ``MARGIN`` from the threshold, detection in ≥ 9 of 10 draws)::

    python tests/benchmarks/eval_summary.py RESULTS ... --json docs/benchmarks/FILE.json

(``RESULTS``: ``--out`` folders of ``eval_clever_hans.py --draws N``, scored with one rule.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RELIED = 0.05   # reliance (flip rate above the clean models') from which a setting counts
#: acceptance criteria: smallest fraction counted, detected share, margin, draws per setting
MIN_FRACTION, DETECTED_SHARE, MARGIN, STABLE_DRAWS = 0.05, 0.95, 1.0, 0.9


def group_of(dataset: str) -> tuple[str, str]:
    """(generator, architecture) of a setting's dataset: ``natf.cnn.adam`` → (natf, cnn)."""
    parts = dataset.split(".")
    return (parts[0], parts[1]) if len(parts) == 3 else (parts[0], "cnn")


def gate(row: dict) -> float:
    """The score the gate acts on: with the transplant test, ``gate_score``
    (:func:`spray.verdict.score.gate_score`: the best cluster the model was not shown to
    ignore, a suspect it follows at the threshold plus the test's margin), else the class
    score."""
    return row.get("gate_score", row["score"])


def reliance(rows: list[dict], row: dict) -> float | None:
    """Flip rate of a planted row's artefact to its class, minus the mean over the clean models
    of the same dataset string (generator, architecture, recipe); None without clean models."""
    rates = row.get("flip_rates")
    if rates is None or row["artefact"] not in rates:
        return None
    base = [r["flip_rates"][row["artefact"]] for r in rows
            if r["artefact"] is None and r["dataset"] == row["dataset"]
            and r["class"] == row["class"] and r.get("flip_rates")
            and row["artefact"] in r["flip_rates"]]
    return None if not base else rates[row["artefact"]] - float(np.mean(base))


def flagged(row: dict, threshold: float) -> bool:
    """Whether the gate flags the check: its score reaches the threshold, or a suspect below
    it is one because the model follows its pieces (``followed_below``)."""
    return gate(row) >= threshold or bool(row.get("followed_below"))


def detected(row: dict, threshold: float) -> bool:
    return (flagged(row, threshold) and row.get("precision", 0) >= 0.9
            and row.get("recall", 0) >= 0.9)


def _dist(values: list[float]) -> str:
    if not values:
        return "—"
    v = np.asarray(values)
    return f"{v.min():.2f} / {np.percentile(v, 10):.2f} / {np.median(v):.2f}"


def summarize(rows: list[dict], threshold: float) -> dict:
    """The numbers of :func:`margin_table` as a dict (groups and totals)."""
    groups: dict[tuple[str, str], dict] = {}
    for r in rows:
        g = groups.setdefault(group_of(r["dataset"]), {
            "relied": {}, "ignored": {}, "unknown": {}, "other_scores": [], "below": 0})
        if not r["planted"]:
            g["other_scores"].append(gate(r))
            g["below"] += bool(r.get("followed_below"))
            continue
        rel = reliance(rows, r)
        key = "unknown" if rel is None else ("relied" if rel >= RELIED else "ignored")
        entry = g[key].setdefault(r["setting"], {"reliance": rel, "rows": []})
        entry["rows"].append(r)
    out = {"threshold": threshold, "relied_min": RELIED, "groups": []}
    for (gen, arch), g in sorted(groups.items()):
        relied_rows = [r for e in g["relied"].values() for r in e["rows"]]
        out["groups"].append({
            "generator": gen, "architecture": arch,
            "relied_settings": {k: {"reliance": e["reliance"],
                                    "detected": sum(detected(r, threshold) for r in e["rows"]),
                                    "draws": len(e["rows"]),
                                    "scores": [gate(r) for r in e["rows"]]}
                                for k, e in g["relied"].items()},
            "not_relied": {k: {"reliance": e["reliance"],
                               "scores": [gate(r) for r in e["rows"]]}
                           for k, e in {**g["ignored"], **g["unknown"]}.items()},
            "detected": sum(detected(r, threshold) for r in relied_rows),
            "planted_checks": len(relied_rows),
            "planted_scores": [gate(r) for r in relied_rows],
            "other_checks": len(g["other_scores"]),
            "highest_other": max(g["other_scores"], default=None),
            "other_flagged_below": g["below"]})
    return out


def margin_table(rows: list[dict], threshold: float) -> str:
    """Markdown: one line per (generator, architecture), then the settings not relied on."""
    s = summarize(rows, threshold)
    lines = [f"threshold {threshold:.2f}; relied on: reliance ≥ {RELIED:.0%} above the clean "
             "models (same generator, architecture, recipe)", "",
             "| generator | arch | relied settings (reliance) | detected, P/R ≥ 0.9 | planted "
             "score min / p10 / median | clean + non-planted checks | highest of them |",
             "|---|---|---|---|---|---|---|"]
    for g in s["groups"]:
        rel = ", ".join(f"{k} ({v['reliance']:.2f})" for k, v in g["relied_settings"].items())
        hi = "—" if g["highest_other"] is None else f"{g['highest_other']:.2f}"
        lines.append(f"| {g['generator']} | {g['architecture']} | {rel or '—'} | "
                     f"{g['detected']}/{g['planted_checks']} | {_dist(g['planted_scores'])} | "
                     f"{g['other_checks']} | {hi} |")
    every = [v for g in s["groups"] for v in g["planted_scores"]]
    others = [g["highest_other"] for g in s["groups"] if g["highest_other"] is not None]
    lines += ["", f"all: detected {sum(g['detected'] for g in s['groups'])}/"
              f"{sum(g['planted_checks'] for g in s['groups'])}; planted scores min / p10 / "
              f"median {_dist(every)}; clean + non-planted checks "
              f"{sum(g['other_checks'] for g in s['groups'])}, highest "
              f"{max(others) if others else float('nan'):.2f}, flagged below the threshold "
              f"{sum(g['other_flagged_below'] for g in s['groups'])}", "",
              "not relied on (not counted as misses): " + (", ".join(
                  f"{k} ({_reliance_text(v['reliance'])}, scores {_dist(v['scores'])})"
                  for g in s["groups"] for k, v in g["not_relied"].items()) or "none")]
    return "\n".join(lines)


def _reliance_text(value: float | None) -> str:
    return "reliance unknown" if value is None else f"reliance {value:.2f}"


def _criterion(name: str, goal: str, measured: str, met: bool) -> dict:
    return {"criterion": name, "goal": goal, "measured": measured, "met": "yes" if met else "no"}


def _counted(reliance_value: float | None, fraction: float) -> bool:
    """Whether a planted setting counts for the criteria: relied on, on ≥ MIN_FRACTION."""
    return reliance_value is not None and reliance_value >= RELIED and fraction >= MIN_FRACTION


def criteria(rows: list[dict], threshold: float) -> list[dict]:
    """The draws against the acceptance criteria, one row per criterion (and generator).

    Counted: the settings the model relies on (:data:`RELIED`) whose artefact is on at least
    :data:`MIN_FRACTION` of the class; a detection is a draw scored at the threshold whose
    suspect has precision and recall ≥ 0.9; the clean side is every clean-model and
    non-planted class check.
    """
    s = summarize(rows, threshold)
    fraction = {r["setting"]: r.get("fraction", 1.0) for r in rows}
    out, settings, planted = [], {}, []
    for g in s["groups"]:
        for name, e in g["relied_settings"].items():
            if _counted(e["reliance"], fraction[name]):
                settings[name] = e
                planted += e["scores"]
    found = [gate(r) for r in rows if r["setting"] in settings and r["planted"]
             and detected(r, threshold)]
    by_gen: dict[str, list[int]] = {}
    for g in s["groups"]:
        counted = [e for k, e in g["relied_settings"].items() if k in settings]
        acc = by_gen.setdefault(g["generator"], [0, 0])
        acc[0] += sum(e["detected"] for e in counted)
        acc[1] += sum(e["draws"] for e in counted)
    for gen, (det, n) in sorted(by_gen.items()):
        if n:
            out.append(_criterion(f"detected, {gen}", f"≥ {DETECTED_SHARE:.0%} of draws",
                                  f"{det}/{n} ({det / n:.0%})", det >= DETECTED_SHARE * n))
    if planted:
        p10 = float(np.percentile(planted, 10))
        out.append(_criterion("planted scores, 10th percentile",
                              f"≥ {threshold + MARGIN:.2f} (threshold + {MARGIN:g})",
                              f"{p10:.2f} ({len(planted)} draws)", p10 >= threshold + MARGIN))
    if found:   # how far the detections lie from falling (misses aside)
        p10 = float(np.percentile(found, 10))
        out.append(_criterion("detected draws' scores, 10th percentile (misses aside)",
                              f"≥ {threshold + MARGIN:.2f} (threshold + {MARGIN:g})",
                              f"{p10:.2f} ({len(found)} draws)", p10 >= threshold + MARGIN))
    n_other = sum(g["other_checks"] for g in s["groups"])
    highest = max((g["highest_other"] for g in s["groups"] if g["highest_other"] is not None),
                  default=None)
    below = sum(g["other_flagged_below"] for g in s["groups"])
    if highest is not None:
        more = f", {below} flagged below the threshold" if below else ""
        out.append(_criterion("clean and non-planted checks, highest score",
                              f"≤ {threshold - MARGIN:.2f} (threshold − {MARGIN:g}), "
                              "≥ 2 000 checks", f"{highest:.2f} ({n_other} checks{more})",
                              highest <= threshold - MARGIN and n_other >= 2000
                              and not below))
    if settings:
        stable = [k for k, e in settings.items() if e["detected"] >= STABLE_DRAWS * e["draws"]]
        out.append(_criterion("settings detected in ≥ 9 of 10 draws", "all",
                              f"{len(stable)}/{len(settings)}", len(stable) == len(settings)))
    return out


def setting_rows(rows: list[dict], threshold: float) -> list[dict]:
    """One row per planted setting: reliance, draws flagged and detected, planted scores and
    the suspects' median precision and recall."""
    out = []
    for name in dict.fromkeys(r["setting"] for r in rows if r["planted"]):
        pl = [r for r in rows if r["setting"] == name and r["planted"]]
        rel = reliance(rows, pl[0])
        scores = [gate(r) for r in pl]
        out.append({
            "setting": name, "reliance": None if rel is None else round(rel, 2),
            "counted": "yes" if _counted(rel, pl[0].get("fraction", 1.0)) else "no",
            "flagged": f"{sum(flagged(r, threshold) for r in pl)}/{len(pl)}",
            "detected": f"{sum(detected(r, threshold) for r in pl)}/{len(pl)}",
            "score min / median / max": f"{min(scores):.2f} / {np.median(scores):.2f} / "
                                        f"{max(scores):.2f}",
            "P / R (median)": f"{np.median([r.get('precision', 0) for r in pl]):.2f} / "
                              f"{np.median([r.get('recall', 0) for r in pl]):.2f}"})
    return out


def _threshold(folder: Path) -> float:
    return float(json.loads((folder / "draws_summary.json").read_text())["threshold"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path,
                    help="--out folders of eval_clever_hans.py --draws N (one rule)")
    ap.add_argument("--json", type=Path, help="write the criteria here (a tables.py table)")
    ap.add_argument("--settings-json", type=Path,
                    help="write one row per planted setting here (a tables.py table)")
    args = ap.parse_args(argv)
    thresholds = {_threshold(d) for d in args.results}
    if len(thresholds) != 1:
        raise SystemExit(f"the folders were scored at different thresholds: {thresholds}")
    (threshold,) = thresholds
    rows = [r for d in args.results for r in json.loads((d / "draws.json").read_text())]
    table = criteria(rows, threshold)
    print(margin_table(rows, threshold))
    print()
    for r in table:
        print(f"{r['criterion']}: {r['measured']} (goal {r['goal']}): {r['met']}")
    command = ("python tests/benchmarks/eval_summary.py "
               + " ".join(d.as_posix() for d in args.results))
    if args.json:
        args.json.write_text(json.dumps({
            "command": command + " --json FILE",
            "columns": ["criterion", "goal", "measured", "met"], "rows": table},
            indent=1) + "\n")
    if args.settings_json:
        args.settings_json.write_text(json.dumps({
            "command": command + " --settings-json FILE",
            "rows": setting_rows(rows, threshold)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
