"""Regenerate the draw tables of docs/verdict.md from the evaluation's JSON.

    python tests/benchmarks/verdict_docs.py --design DIR ... --heldout DIR ...
    python tests/benchmarks/verdict_docs.py            # only rewrite the tables from the JSON

Each DIR is an ``--out`` folder of ``eval_clever_hans.py --draws N`` (its ``draws.json``). The
records (one per setting and draw: planted score and P/R, highest score of the other classes)
are written to ``docs/verdict-draws.json`` and the block between the ``draws-table`` markers
of ``docs/verdict.md`` is replaced by tables made from that file alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_clever_hans import draw_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
JSON = ROOT / "docs" / "verdict-draws.json"
DOC = ROOT / "docs" / "verdict.md"
BENCH = ROOT / "docs" / "verdict-bench.json"
BEGIN, END = "<!-- draws-table:begin -->", "<!-- draws-table:end -->"
BENCH_BEGIN, BENCH_END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"


def records(dirs: list[str]) -> list[dict]:
    return [rec for d in dirs
            for rec in draw_records(json.loads((Path(d) / "draws.json").read_text()))]


def _setting_rows(recs: list[dict], threshold: float) -> list[str]:
    lines = []
    for name in dict.fromkeys(r["setting"] for r in recs):
        rs = [r for r in recs if r["setting"] == name]
        pl = [r for r in rs if "planted_score" in r]
        other = max(r["highest_other"] for r in rs)
        if pl:
            scores = [r["planted_score"] for r in pl]
            det = sum(r["planted_score"] >= threshold and (r["precision"] or 0) >= 0.9
                      and (r["recall"] or 0) >= 0.9 for r in pl)
            flagged = sum(s >= threshold for s in scores)
            size = f"{pl[0]['n_planted']}/{pl[0]['n_class']}"
            lines.append(f"| {name} | {len(rs)} | {size} | {flagged}/{len(pl)} | {det}/{len(pl)} "
                         f"| {min(scores):.2f} | {np.median(scores):.2f} | {other:.2f} |")
        else:
            lines.append(f"| {name} | {len(rs)} | — | — | — | — | — | {other:.2f} |")
    return lines


def tables(data: dict) -> str:
    threshold = data["threshold"]
    out = []
    for part in ("design", "heldout"):
        recs = data.get(part) or []
        if not recs:
            continue
        out += [f"**{'Design' if part == 'design' else 'Held-out'}** "
                f"({data['draw_size']} samples per class and draw, threshold {threshold}):", "",
                "| setting | draws | planted / class (first draw) | flagged | flagged with "
                "P/R ≥ 0.9 | lowest planted score | median planted score | highest score of "
                "another class |", "|---|---|---|---|---|---|---|---|"]
        out += _setting_rows(recs, threshold)
        planted = [r["planted_score"] for r in recs if "planted_score" in r]
        other = max(r["highest_other"] for r in recs)
        seconds = np.median([r["seconds"] for r in recs]) / 10
        p10 = float(np.percentile(planted, 10)) if planted else float("nan")
        out += ["", f"Margin: 10th percentile of planted scores "
                f"{p10:.2f} (threshold + {p10 - threshold:.2f}); "
                f"highest score of any other class {other:.2f} "
                f"(threshold − {threshold - other:.2f}); {sum(r['n_other'] for r in recs)} "
                f"other-class checks; median {seconds:.2f} s per class (preprocess, analysis, score).",
                ""]
    return "\n".join(out)


def bench_table(bench: dict) -> str:
    """The cost table from ``bench_flags.py --json`` rows (a variant a row lacks: —; CPU
    seconds and their ratio where the rows have them)."""
    rows = bench["rows"]
    cols = list(dict.fromkeys(k[len("score_s_"):] for r in rows for k in r
                              if k.startswith("score_s_")))
    cpu = all("analysis_cpu_s" in r for r in rows)

    def cell(r, key):
        return f"{r[key]:.1f}" if key in r else "—"

    head = ["n", "analysis without t-SNE (s)", "candidates",
            *(f"score, {c} (s)" for c in cols), "score / analysis"]
    if cpu:
        head += ["analysis, CPU (s)", *(f"score, {c}, CPU (s)" for c in cols),
                 "score / analysis, CPU"]
    out = [f"`{bench['command']}` ({bench['note']}):", "", "| " + " | ".join(head) + " |",
           "|---" * len(head) + "|"]
    for r in rows:
        cells = [str(r["n"]), f"{r['analysis_s']:.1f}", str(r["candidates"]),
                 *(cell(r, "score_s_" + c) for c in cols),
                 f"{r['score_s_default'] / r['analysis_s']:.1f}"]
        if cpu:
            cells += [f"{r['analysis_cpu_s']:.1f}", *(cell(r, "score_cpu_s_" + c) for c in cols),
                      f"{r['score_cpu_s_default'] / r['analysis_cpu_s']:.1f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _replace(doc: str, begin: str, end: str, text: str) -> str:
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{text}\n{end}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--design", nargs="*", default=[])
    ap.add_argument("--heldout", nargs="*", default=[])
    ap.add_argument("--threshold", type=float, default=2.0)
    ap.add_argument("--draw-size", type=int, default=300)
    ap.add_argument("--bench", help="rows of bench_flags.py --json to put in the cost table")
    ap.add_argument("--bench-command", default="")
    ap.add_argument("--bench-note", default="")
    args = ap.parse_args(argv)
    if args.design or args.heldout:
        data = {"threshold": args.threshold, "draw_size": args.draw_size,
                "design": records(args.design), "heldout": records(args.heldout)}
        JSON.write_text(json.dumps(data, indent=1) + "\n")
    if args.bench:
        BENCH.write_text(json.dumps({"command": args.bench_command, "note": args.bench_note,
                                     "rows": json.loads(Path(args.bench).read_text())},
                                    indent=1) + "\n")
    doc = DOC.read_text()
    if JSON.is_file():
        doc = _replace(doc, BEGIN, END, tables(json.loads(JSON.read_text())))
    if BENCH.is_file():
        doc = _replace(doc, BENCH_BEGIN, BENCH_END, bench_table(json.loads(BENCH.read_text())))
    DOC.write_text(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
