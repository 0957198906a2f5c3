"""Does the gate's chance test tell the models that learnt from those that did not?
(docs/verdict.md, "A model that learnt nothing")

    python tests/benchmarks/model_skill.py CACHE_DIR ... [--draws 10] [--draw-size 300] \
        [--scores RESULT_DIR ...] [--json docs/benchmarks/model-skill.json]

Each ``CACHE_DIR`` is a ``cache/`` folder of ``eval_clever_hans.py`` (one ``.npz`` per setting:
labels, predictions, the test split). For every cached model it reports the test accuracy, and
:func:`spray.skill.chance_test` on what ``spray run`` would analyse: the whole explained
set (``kappa``, ``p``) and the eval's random draws of ``--draw-size`` samples per class (the
largest p over the draws, and in how many draws the gate refuses the model at
``health.max_chance_p`` of ``spray-default``). With ``--scores RESULT_DIR ...`` (``--out``
folders of ``eval_clever_hans.py --rescore --draws N`` on those caches) it adds the number of
clean-model and non-planted class checks of each model and the highest score among them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_clever_hans import draw  # noqa: E402

from spray.config.presets import load_pipeline  # noqa: E402
from spray.skill import chance_test, learnt, max_chance_p  # noqa: E402

log = logging.getLogger("model_skill")


def model_row(path: Path, level: float, draws: int, size: int) -> dict:
    """The chance test of one cached model, on all its explained samples and on its draws."""
    data = dict(np.load(path))
    test = data["is_test"]
    whole = chance_test(data["labels"], data["prediction"])
    per_draw = [chance_test(*(lambda d: (d["labels"], d["prediction"]))(
        draw(data, size, seed=10_000 + d))) for d in range(draws)]
    return {"model": path.stem,
            "test accuracy": round(float((data["prediction"][test] == data["labels"][test])
                                         .mean()), 3),
            "samples": whole["samples"], "chance": round(whole["chance"], 3),
            "kappa": round(whole["kappa"], 3), "p": whole["p_value"],
            "draws refused": f"{sum(learnt(s, level) is False for s in per_draw)}/{draws}",
            "largest p over draws": max(s["p_value"] for s in per_draw),
            "smallest kappa over draws": round(min(s["kappa"] for s in per_draw), 3)}


def add_scores(rows: list[dict], dirs: list[Path]) -> None:
    """Per model: its clean-model and non-planted class checks in the ``draws.json`` of
    ``dirs`` and the highest score among them."""
    checks: dict[str, list[float]] = {}
    for d in dirs:
        for r in json.loads((d / "draws.json").read_text()):
            if not r["planted"]:
                checks.setdefault(r["setting"], []).append(float(r["score"]))
    for row in rows:
        scores = checks.get(row["model"], [])
        row["class checks"] = len(scores)
        row["highest score"] = round(max(scores), 2) if scores else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caches", nargs="+", type=Path)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--draw-size", type=int, default=300)
    ap.add_argument("--scores", nargs="+", type=Path, default=[])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    level = max_chance_p(load_pipeline("spray-default")["health"])
    rows = [model_row(p, level, args.draws, args.draw_size)
            for d in args.caches for p in sorted(d.glob("*.npz"))]
    if args.scores:
        add_scores(rows, args.scores)
    rows.sort(key=lambda r: r["kappa"])
    for r in rows:
        log.info("%-34s acc %.3f kappa %6.3f p %.2g; draws refused %s, largest p %.2g",
                 r["model"], r["test accuracy"], r["kappa"], r["p"], r["draws refused"],
                 r["largest p over draws"])
    if args.json:
        args.json.write_text(json.dumps({
            "rows": rows, "command": "python tests/benchmarks/model_skill.py "
            + " ".join(f"{d.parent.name}/{d.name}" for d in args.caches)
            + f" --draws {args.draws} --draw-size {args.draw_size}"
            + (" --scores " + " ".join(d.name for d in args.scores) if args.scores else ""),
            "level": level}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
