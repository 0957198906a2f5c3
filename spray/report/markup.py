"""HTML building blocks shared by the report's pages: escaping, number formats, the page
template and its style sheet."""

from __future__ import annotations

import html
import math

import numpy as np

from spray.report.figures import (
    clean_label,
)


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _name(entry: dict, limit: int | None = None) -> str:
    return _esc(clean_label(entry.get("name", entry.get("class")), limit))


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if not math.isfinite(v):
        return _esc(v)
    if digits >= 3 and v != 0 and abs(v) < 10 ** -digits:
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def _shown_cluster(entry: dict) -> dict | None:
    """The suspect cluster, or else the strongest candidate."""
    cid = entry.get("suspect_cluster")
    cid = entry.get("candidate_cluster") if cid is None else cid
    return next((c for c in entry.get("clusters", []) if c["id"] == cid), None)


def _verdict_word(entry: dict) -> str:
    if entry.get("flagged"):
        return "FLAGGED"
    return "watch" if entry.get("watch") else "ok"


# ------------------------------------------------------------------------------ page parts

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style></head>
<body>{body}</body></html>
"""

STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC",
"Noto Sans CJK JP","Microsoft YaHei","PingFang SC",sans-serif;margin:1.5em auto;max-width:1200px;
padding:0 1em;color:#222;font-size:15px;line-height:1.45}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}.flag{background:#fdd}.watch{background:#fff3d6}
.cand{background:#fff9e8}img{max-width:100%;height:auto;image-rendering:pixelated}
code{background:#f4f4f4;padding:0 .2em}
.verdict{font-size:1.08em;padding:.5em .8em;border-left:5px solid #4a4}
.verdict.bad{border-color:#c33;background:#fff3f3}.verdict.warn{border-color:#d90;
background:#fffaf0}.headline{font-size:1.15em;margin:.6em 0}
dl.run{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.92em}
dl.run dt{color:#666}dl.run dd{margin:0}.note{color:#555;font-size:.93em}
.tiles{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
figure{margin:.3em 0}figcaption{font-size:.9em;color:#444;max-width:640px}
.multiples{display:flex;flex-wrap:wrap;gap:.4em}.legend .key{margin-right:1em;white-space:nowrap}
.dot{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.3em}
svg.chart{max-width:100%;height:auto}"""
