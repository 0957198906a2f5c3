"""The clean-score reference of the verdict (spray/verdict/clean_scores.json), and its check on
held-out data.

    # write the reference from the design draws (each DIR an --out folder of
    # eval_clever_hans.py --draws N, scored with the rule of this tree)
    python tests/benchmarks/verdict_calibration.py build DIR ... [--trust-tree]
    # how the reference's rates hold on held-out draws scored with the same rule
    python tests/benchmarks/verdict_calibration.py check DIR ... [--out FILE.json]
    # once a held-out round is reported: add its clean checks to the reference
    python tests/benchmarks/verdict_calibration.py extend DIR ...

Every clean-model and non-planted class check of the folders' ``draws.json`` is a reference
check. A folder's ``rule.json`` (written by ``eval_clever_hans.py`` when it scores) must name the
flags of this tree; folders scored before that file existed are taken only with
``--trust-tree`` (their rule is then the reader's word). ``check`` compares, for the scores at
which the reference puts the rate at 10 %, 3 %, 1 %, 0.3 % and 0.1 %, the share of held-out
clean checks at or above them, with a two-sided 95 % interval of that share. ``extend`` adds
the clean checks of further folders (scored with this tree's rule, settings not yet in it) to
the reference without rescoring the folders it was built from; it refuses a reference whose
flags or sections are not this tree's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spray.config.presets import FlagsSection, load_pipeline  # noqa: E402
from spray.verdict import calibration  # noqa: E402

log = logging.getLogger("verdict_calibration")

#: the reference rates ``check`` tests on held-out checks
RATES = (0.1, 0.03, 0.01, 0.003, 0.001)


def _tree_rule() -> dict:
    """The scoring flags and analysis sections of this tree's default pipeline."""
    pipe = load_pipeline("spray-default")
    return {**calibration.scoring_params(FlagsSection().model_dump()),
            **calibration.scoring_sections(pipe)}


def clean_checks(dirs: list[str], trust_tree: bool = False) -> tuple[list[float], list[dict]]:
    """The scores of every clean-model and non-planted class check of ``dirs`` and a count per
    setting; refuses folders scored with other flags or sections than this tree's defaults,
    and repeated checks."""
    mine = _tree_rule()
    scores, sources, seen = [], {}, set()
    for d in map(Path, dirs):
        rule = d / "rule.json"
        if rule.is_file():
            stored = json.loads(rule.read_text())
            if "sections" not in stored and not trust_tree:
                raise SystemExit(f"{d}: rule.json names no pipeline sections (written before "
                                 "they were); --trust-tree takes them to be this tree's")
            theirs = {**calibration.scoring_params(stored["params"]),
                      **stored.get("sections", calibration.scoring_sections(
                          load_pipeline("spray-default")))}
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if differ:
                raise SystemExit(f"{d}: scored with other flags or sections ({', '.join(differ)})")
        elif not trust_tree:
            raise SystemExit(f"{d}: no rule.json (scored before it was written); "
                             "--trust-tree takes its rule to be this tree's")
        for row in json.loads((d / "draws.json").read_text()):
            if row["planted"]:
                continue
            key = (row["setting"], row["class"], row.get("draw", 0))
            if key in seen:
                raise SystemExit(f"{d}: check {key} appears twice")
            seen.add(key)
            scores.append(round(float(row["score"]), 3))
            sources[row["setting"]] = sources.get(row["setting"], 0) + 1
    return scores, [{"setting": s, "checks": n} for s, n in sorted(sources.items())]


def build(dirs: list[str], out: Path, trust_tree: bool) -> dict:
    """Write the reference file from the clean checks of ``dirs``."""
    scores, sources = clean_checks(dirs, trust_tree)
    commits = sorted({json.loads((Path(d) / "rule.json").read_text()).get("commit") or "?"
                      for d in dirs if (Path(d) / "rule.json").is_file()})
    ref = {"rule": "input-contrast", "generated": datetime.date.today().isoformat(),
           "command": "python tests/benchmarks/verdict_calibration.py build "
                      + " ".join(Path(d).name for d in dirs)
                      + (" --trust-tree" if trust_tree else ""),
           "commits": commits, "checks": len(scores),
           "params": calibration.scoring_params(FlagsSection().model_dump()),
           "sections": calibration.scoring_sections(load_pipeline("spray-default")),
           "sources": sources, "scores": sorted(scores, reverse=True)}
    out.write_text(json.dumps(ref, indent=1) + "\n")
    _log_reference(out)
    return ref


def _log_reference(path: Path) -> None:
    r = calibration._load(path)
    log.info("%d reference checks, highest %.3f; tail scale %.3f; threshold 1.7 → rate %.2g "
             "(counts: ≤ %.2g); false_flag_rate 1e-3 → threshold %.3f", r.n, r.scores[0],
             r.scale, r.rate(1.7), r.upper(1.7), r.threshold(1e-3))


def extend(dirs: list[str], path: Path, trust_tree: bool) -> dict:
    """Add the clean checks of ``dirs`` to the reference file at ``path``."""
    ref = json.loads(path.read_text())
    mine = _tree_rule()
    theirs = {**calibration.scoring_params(ref["params"]), **ref["sections"]}
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise SystemExit(f"{path}: built with other flags or sections ({', '.join(differ)}); "
                         "build it again instead")
    scores, sources = clean_checks(dirs, trust_tree)
    known = {s["setting"] for s in ref["sources"]}
    again = sorted(known & {s["setting"] for s in sources})
    if again:
        raise SystemExit(f"already in the reference: {', '.join(again)}")
    commits = {json.loads((Path(d) / "rule.json").read_text()).get("commit") or "?"
               for d in dirs if (Path(d) / "rule.json").is_file()}
    ref.update(generated=datetime.date.today().isoformat(),
               command=ref["command"] + "; extend " + " ".join(Path(d).name for d in dirs),
               commits=sorted(set(ref["commits"]) | commits),
               checks=ref["checks"] + len(scores),
               sources=sorted(ref["sources"] + sources, key=lambda s: s["setting"]),
               scores=sorted(ref["scores"] + scores, reverse=True))
    path.write_text(json.dumps(ref, indent=1) + "\n")
    _log_reference(path)
    return ref


def check(dirs: list[str], trust_tree: bool, path: Path = calibration.REFERENCE) -> list[dict]:
    """The reference's rates against the held-out clean checks of ``dirs``."""
    from scipy.stats import beta

    scores, _ = clean_checks(dirs, trust_tree)
    held = np.asarray(scores)
    ref = calibration._load(Path(path))
    rows = []
    for rate in RATES:
        at = ref.threshold(rate)
        k, n = int((held >= at).sum()), held.size
        lo = float(beta.ppf(0.025, k, n - k + 1)) if k else 0.0
        hi = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
        rows.append({"reference rate": rate, "score at that rate": round(at, 3),
                     "held-out checks at or above": k, "of": n, "held-out rate": k / n,
                     "95 % interval": f"{lo:.2g}–{hi:.2g}"})
        log.info("rate %.3g at score %.2f: held-out %d of %d (%.3g, 95 %% %.3g–%.3g)",
                 rate, at, k, n, k / n, lo, hi)
    top = float(held.max())
    log.info("highest held-out clean score %.2f: reference rate %.2g", top, ref.rate(top))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["build", "check", "extend"])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--trust-tree", action="store_true",
                    help="take folders without rule.json as scored with this tree's flags")
    ap.add_argument("--out", type=Path, help="build, extend: the reference file "
                    "(default: the package's); check: a JSON file for the comparison")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.what == "build":
        build(args.dirs, args.out or calibration.REFERENCE, args.trust_tree)
    elif args.what == "extend":
        extend(args.dirs, args.out or calibration.REFERENCE, args.trust_tree)
    else:
        rows = check(args.dirs, args.trust_tree)
        if args.out:   # the shape of tests/benchmarks/tables.py
            command = ("python tests/benchmarks/verdict_calibration.py check "
                       + " ".join(Path(d).name for d in args.dirs)
                       + (" --trust-tree" if args.trust_tree else ""))
            args.out.write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
