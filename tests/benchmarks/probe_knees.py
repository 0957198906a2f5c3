"""What other penalty knees would do to the verdict: a what-if on collected evidence.

    # score draws of cached evaluation models with the default rule, keeping every scored
    # candidate's evidence (one JSON line per class check)
    python tests/benchmarks/probe_knees.py collect OUT.jsonl --draws 5 STORE[:SETTINGS] ...
    # rescore those candidates with other knees and print / write the table
    python tests/benchmarks/probe_knees.py whatif OUT.jsonl ... --knees 0.6/0.6/0.75 ... [--json F]
    # the same with a weight on the hot-spot mass (knee/weight after the three knees)
    python tests/benchmarks/probe_knees.py whatif OUT.jsonl ... --knees 0.5/0.6/0.75/0.03/100

A STORE is an ``--out`` (or ``--cache-from``) folder of ``eval_clever_hans.py`` holding
``cache/``; its settings are read from ``STORE/settings.txt`` or from the SETTINGS file named
after the colon. Draws are those of ``eval_clever_hans.py --draws`` (seeds 10 000 + d).

A candidate's score with other knees (``colocation_knee / edge_randomness_knee /
hot_spot_knee``, and optionally ``hot_spot_mass_knee / hot_spot_mass_weight``) is its score
plus its penalties at the default knees minus its penalties at the new ones, computed
with :mod:`spray.verdict.evidence`: the contrast and its bootstrap do not depend on these
knees. The class takes its best candidate. What the what-if cannot see:
which candidates split off or are left unmeasured by the early exits (those can only score
lower with tighter knees), and who the suspect's members are (a draw counts as detected when
it is flagged and its reported suspect, assumed unchanged, had precision and recall ≥ 0.9).
Planted draws count when their artefact turns at least ``--min-flip`` of other classes'
images into the class (the flip rate; 0.10).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import eval_clever_hans as E  # noqa: E402

from spray.config.presets import FlagsSection, load_pipeline  # noqa: E402
from spray.verdict import evidence  # noqa: E402

DETECT = 0.9
GREY = ("fashion", "digits")


def collect(out: str, draws: int, stores: list[str]) -> None:
    """Append every class check of ``draws`` draws of each store's settings to ``out``."""
    pipe = load_pipeline("spray-default")
    with open(out, "a") as fh:
        for spec in stores:
            store, _, listed = spec.partition(":")
            store = Path(store)
            settings = Path(listed) if listed else store / "settings.txt"
            for line in settings.read_text().split():
                setting = E.parse_setting(line)
                cache = store / "cache" / f"{E.setting_name(setting)}.npz"
                if not cache.exists():
                    continue
                data = dict(np.load(cache))
                for key in ("relevance", "inputs"):
                    data[key] = data[key].astype(np.float32)
                for d in range(draws):
                    for row in E.score_setting(setting, E.draw(data, 300, 10_000 + d), pipe):
                        row["draw"] = d
                        fh.write(json.dumps(row, default=float) + "\n")
                print(f"{E.setting_name(setting)}: {draws} draws", flush=True)


def penalties(cluster: dict, params: FlagsSection) -> float:
    """The knee-dependent penalties of a scored candidate (colocation, edge, hot spot)."""
    total = 0.0
    if cluster.get("colocation") is not None:
        total += evidence.colocation_penalty(cluster["colocation"], params)
    if cluster.get("edge_randomness") is not None:
        total += evidence.edge_penalty(cluster["edge_randomness"], params)
    if cluster.get("hot_spot_separation") is not None:
        total += evidence.hot_spot_penalty(cluster["hot_spot_separation"], params)
    if cluster.get("hot_spot_mass") is not None:
        total += evidence.hot_spot_mass_penalty(cluster["hot_spot_mass"], params)
    return total


def class_score(row: dict, base: FlagsSection, params: FlagsSection) -> float:
    """The class score with the knees of ``params`` (its best scored candidate)."""
    scores = [c["score"] + penalties(c, base) - penalties(c, params)
              for c in row.get("clusters", []) if c.get("score") is not None
              and c.get("size_penalty") is not None]
    return max(scores) if scores else row["score"]


def relied_on(row: dict, min_flip: float) -> bool:
    flip = (row.get("flip_rates") or {}).get(row["artefact"])
    return flip is not None and flip >= min_flip


def whatif(rows: list[dict], knees: str, min_flip: float) -> dict:
    """One table row: the clean tail and the planted flags with ``knees``
    (co/edge/hot[/mass knee/mass weight])."""
    values = list(map(float, knees.split("/")))
    base = FlagsSection()
    params = FlagsSection(**dict(zip(("colocation_knee", "edge_randomness_knee", "hot_spot_knee",
                                      "hot_spot_mass_knee", "hot_spot_mass_weight"), values)))
    t = base.threshold
    grey, scene, flagged, detected, lost, unused = [], [], 0, 0, {}, 0
    for row in rows:
        score = class_score(row, base, params)
        if not row["planted"]:
            (grey if row["dataset"] in GREY else scene).append(score)
        elif not relied_on(row, min_flip):
            unused += score >= t
        else:
            flagged += score >= t
            detected += bool(score >= t and row.get("precision", 0) >= DETECT
                             and row.get("recall", 0) >= DETECT)
            if row["score"] >= t > score:
                lost[row["artefact"]] = lost.get(row["artefact"], 0) + 1
    planted = sum(1 for r in rows if r["planted"] and relied_on(r, min_flip))
    return {"knees: colocation / edge randomness / hot-spot [/ mass knee / mass weight]":
            knees.replace("/", " / "),
            "grey non-planted: highest": round(max(grey), 2) if grey else None,
            "grey non-planted ≥ 0.7": int(np.sum(np.array(grey) >= 0.7)),
            "scene non-planted: highest": round(max(scene), 2) if scene else None,
            "planted flagged": f"{flagged} of {planted}", "detected (est.)": detected,
            "flags lost, by artefact": ", ".join(f"{k} {v}" for k, v in sorted(lost.items()))
            or "—",
            "planted, not relied on: flagged": f"{unused} of {len(rows) - len(grey) - len(scene) - planted}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("out")
    c.add_argument("stores", nargs="+")
    c.add_argument("--draws", type=int, default=5)
    w = sub.add_parser("whatif")
    w.add_argument("evidence", nargs="+")
    w.add_argument("--knees", nargs="+", default=["0.5/0.6/0.75"])
    w.add_argument("--min-flip", type=float, default=0.10)
    w.add_argument("--json")
    args = ap.parse_args(argv)
    if args.cmd == "collect":
        collect(args.out, args.draws, args.stores)
        return 0
    rows = [json.loads(line) for f in args.evidence
            for line in Path(f).read_text().splitlines() if line]
    table = [whatif(rows, k, args.min_flip) for k in args.knees]
    for r in table:
        print(r)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python tests/benchmarks/probe_knees.py whatif EVIDENCE --knees "
                       + " ".join(args.knees), "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
