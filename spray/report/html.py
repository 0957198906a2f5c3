"""Per-class eigengap reports and the run overview, built only from what is in the store.

Writes ``RUN_DIR/report/summary.json`` (schema in docs/outputs.md), ``index.html`` (what was
run, when, on what; flagged and watched classes with a plain-language headline; classes ranked
by Clever-Hans score; the spectra of the top-ranked classes side by side) and per class a page
(headline, the evidence, the suspect's mean relevance against the rest of the class, suspect
examples with and without their relevance overlay, spectrum with the chosen gap, clusters,
t-SNE) plus an interactive t-SNE page (Bokeh, offline). Every string from the data or the config
is HTML-escaped and stripped of control characters.

Class pages are rendered in a process pool, and only for classes whose summary entry changed
since the last report (``report/.render-state.json``), so a rerun over an unchanged store
rewrites just the summary and the overview.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import yaml

from spray.report.figures import (
    clean_label,
    heat_rgb,
    img_tag,
    input_rgb,
    legend_html,
    overlay_rgb,
    png_strip,
    scatter_svg,
    spectrum_svg,
)
from spray.report.headline import headline
from spray.report.summary import class_fingerprints, read_class_entries, write_summary
from spray.store import open_class

log = logging.getLogger(__name__)

#: eigenvalues shown per class in the overview figure
OVERVIEW_EIGENVALUES = 12
#: classes whose spectra the overview draws side by side (the top of the ranking)
OVERVIEW_CLASSES = 30
#: flagged and watched classes listed with their headline on the overview at most
OVERVIEW_HEADLINES = 25
#: bump when the pages change, so a new spray version re-renders every class once
RENDER_VERSION = 2
STATE_FILE = ".render-state.json"
#: below this many pages to render, a process pool costs more than it saves
POOL_MIN_PAGES = 12


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


def _load_config(run_dir: Path) -> dict:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _run_header(run_dir: Path, summary: dict, cfg: dict) -> str:
    """What was run, when, on what — as a definition list."""
    data = cfg.get("data") or {}
    model = cfg.get("model") or {}
    attribution = cfg.get("attribution") or {}
    pipeline = cfg.get("pipeline") or {}
    pipe_name = pipeline.get("preset") or pipeline.get("name") if isinstance(pipeline, dict) \
        else pipeline
    pre = (pipeline.get("preprocess") or {}) if isinstance(pipeline, dict) else {}
    flags = (pipeline.get("flags") or {}) if isinstance(pipeline, dict) else {}
    ok = [e for e in summary["classes"] if e.get("status") == "ok"]
    n_total = sum(int(e.get("n_samples") or 0) for e in summary["classes"])
    fp = summary.get("fingerprints") or {}
    items = [
        ("data", f"<code>{_esc(data.get('source', '?'))}</code> "
                 f"<code>{_esc(data.get('path') or data.get('size') or '')}</code>"
                 + (f" (fingerprint <code>{_esc(fp['data'])}</code>)" if fp.get("data") else "")),
        ("model", f"<code>{_esc(model.get('factory', '?'))}</code>"
                  + (f", weights <code>{_esc(model.get('weights'))}</code>"
                     if model.get("weights") else "")
                  + (f" (fingerprint <code>{_esc(fp['model'])}</code>)" if fp.get("model") else "")),
        ("relevance", f"LRP composite <code>{_esc(attribution.get('composite', '?'))}</code>, "
                      f"target <code>{_esc(attribution.get('target', 'label'))}</code>"),
        ("analysis", f"pipeline <code>{_esc(pipe_name or '?')}</code>"
                     + (f", pooled to <code>{_esc(pre.get('pool'))}</code>, "
                        f"normalize <code>{_esc(pre.get('normalize'))}</code>" if pre else "")),
        ("verdict", f"rule <code>{_esc(flags.get('score', 'input-contrast'))}</code>, "
                    f"threshold <code>{_esc(flags.get('threshold', ''))}</code>"),
        ("classes", f"{len(ok)} analysed of {len(summary['classes'])}, {n_total} samples"),
        ("run", f"<code>{_esc(run_dir.resolve())}</code>, config hash "
                f"<code>{_esc(summary.get('config_hash'))}</code>"),
        ("written", f"{_esc(summary.get('created'))} by spray {_esc(summary.get('spray_version'))}"),
    ]
    return "<dl class=run>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _split_note(cl: dict) -> str:
    return (f" split off cluster {_esc(cl['split_from'])}" if cl.get("split_from") is not None
            else "")


def _cluster_rows(entry: dict) -> str:
    rows = []
    for cl in entry["clusters"]:
        cls = " class=flag" if cl.get("suspect") else (" class=cand" if cl.get("candidate") else "")
        peak = cl.get("peak")
        stable = ("not resampled" if cl.get("resampled") is False
                  else _fmt(cl.get("contrast_stable"), 2))
        excluded = " " + _esc(cl["excluded"]) if cl.get("excluded") else ""
        rows.append(
            f"<tr{cls}><td>{_esc(cl['id'])}{' (suspect)' if cl.get('suspect') else ''}"
            f"{_split_note(cl)}</td>"
            f"<td>{_fmt(cl['size'])}</td><td>{_fmt(cl['fraction'])}</td>"
            f"<td>{_fmt(cl.get('conductance_relevance'), 4)}</td>"
            f"<td>{_fmt(cl.get('conductance_input'), 4)}</td><td>{_fmt(cl.get('contrast'), 2)}</td>"
            f"<td>{stable}</td><td>{_fmt(cl.get('size_penalty'), 2)}</td>"
            f"<td>{_fmt(cl.get('input_randomness'), 2)}</td>"
            f"<td>{_fmt(cl.get('randomness_penalty'), 2)}</td>"
            f"<td>{_fmt(cl.get('concentration'), 2)}</td>"
            f"<td>{_esc(peak) if peak is not None else ''}</td>"
            f"<td>{_fmt(cl.get('score'), 2)}{excluded}</td></tr>")
    return "".join(rows)


def _evidence(entry: dict) -> str:
    cl = _shown_cluster(entry)
    if cl is None or "contrast" not in cl:
        return "<p>No cluster is a candidate (none holds between the size limits of the rule).</p>"
    cid = cl["id"]
    what = "Suspect" if entry["flagged"] else "Strongest candidate"
    params = entry.get("flag_params") or {}
    area = float(params.get("concentration_area", 0.1))
    mask_area = float(params.get("input_mask_area", 0.0))
    graph = (f"the input graph (inputs without the {100 * mask_area:.0f} % of the cells where "
             f"its mean relevance differs most from the rest's)" if mask_area > 0
             else "the input graph")
    parts = [f"<b>{what}: cluster {_esc(cid)}</b>, {_fmt(cl['size'])} samples "
             f"({100 * float(cl['fraction']):.1f} % of the class).",
             f"Its conductance is {_fmt(cl['conductance_relevance'], 4)} in the relevance graph "
             f"and {_fmt(cl['conductance_input'], 4)} in {graph}: contrast "
             f"log(φ_input/φ_relevance) = {_fmt(cl['contrast'], 2)}",
             f"(bootstrap-stable value {_fmt(cl.get('contrast_stable'), 2)}, size penalty "
             f"{_fmt(cl.get('size_penalty'), 2)}, randomness penalty "
             f"{_fmt(cl.get('randomness_penalty'), 2)}) → score {_fmt(cl.get('score'), 2)} "
             f"against the threshold {_fmt(entry.get('threshold'), 2)}."]
    if cl.get("split_from") is not None:
        parent = next((c for c in entry["clusters"] if c["id"] == cl["split_from"]), {})
        if cl.get("cut_along") is not None:
            how = (f"a sweep cut along eigenvector {_esc(cl['cut_along'])} separates them, and "
                   f"the cut scores higher than the clusters it takes samples from, so it is "
                   f"shown as a cluster of its own (<code>sweep_eigenvectors</code>).")
        else:
            how = ("the spectral bisection of that cluster separates them, and this side scores "
                   "higher than the whole cluster, so it is shown as a cluster of its own "
                   "(<code>bisect_clusters</code>).")
        parts.append(f"The analysis had it in cluster {_esc(cl['split_from'])} together with "
                     f"{_fmt(parent.get('size'))} other samples; {how}")
    if cl.get("input_randomness") is not None:
        where = (f"without the {100 * mask_area:.0f} % of the cells where its inputs differ "
                 f"most from the rest's" if mask_area > 0 else "as they are")
        parts.append(f"Its inputs, {where}, have {_fmt(cl['input_randomness'], 2)} × the "
                     f"conductance of a random subset of the same size (input randomness; about 1 "
                     f"= no group apart from a local mark, as for an artefact stamped on random "
                     f"members; well below 1 = a sub-group of the data).")
    if cl.get("concentration") is not None:
        parts.append(f"{100 * float(cl['concentration']):.0f} % of the difference between its "
                     f"mean relevance and the rest of the class lies in the top "
                     f"{100 * area:.0f} % of the grid cells (uniform: {100 * area:.0f} %), peaking at "
                     f"cell {_esc(cl.get('peak'))} (row, column of the preprocessing grid).")
    if cl.get("members"):
        shown = ", ".join(_esc(m) for m in cl["members"][:30])
        more = f" … ({len(cl['members'])} in all, see summary.json)" if len(cl["members"]) > 30 else ""
        parts.append(f"Members (dataset indices): {shown}{more}.")
    return "<p>" + " ".join(parts) + "</p>"


def _splits_note(entry: dict) -> str:
    n = len(entry.get("splits") or [])
    return f" (+ {n} split off by the score)" if n else ""


def _watch_note(entry: dict) -> str:
    if entry.get("flagged") or not entry.get("watch"):
        return ""
    gap = float(entry["threshold"]) - float(entry["score"])
    return (f" Watch: the score is {gap:.2f} below the threshold, a near miss (never "
            f"failing).")


def _health_note(entry: dict) -> str:
    """One line of relevance health: conservation ratio, NaN/Inf and all-zero maps."""
    h = entry.get("health")
    if not h:
        return "<p class=note>Relevance health: not recorded for this class.</p>"
    limits = h.get("limits") or {}
    outside = (f", {_fmt(h['outside'])} outside [{limits['conservation_min']:g}, "
               f"{limits['conservation_max']:g}]" if "outside" in h and limits else "")
    unrecorded = f", {_fmt(h['unrecorded'])} not recorded" if h.get("unrecorded") else ""
    return (f"<p class=note>Relevance health (Σ relevance / explained logit): median "
            f"{_fmt(h['conservation_median'])} (5–95 %: {_fmt(h['conservation_p05'])} – "
            f"{_fmt(h['conservation_p95'])}){outside}; maps with NaN/Inf "
            f"{_fmt(h['nonfinite_samples'])}, all-zero {_fmt(h['zero_maps'])}, undefined ratio "
            f"{_fmt(h['undefined'])}{unrecorded}.</p>")


# ------------------------------------------------------------------------------ class page

def _rest_mean(means: np.ndarray, sizes: np.ndarray, j: int) -> np.ndarray:
    rest_w = np.delete(sizes, j)
    return np.tensordot(rest_w / rest_w.sum(), np.delete(means, j, axis=0), axes=1)


def _suspect_figures(entry: dict, out: Path, ctx: dict) -> tuple[str, np.ndarray | None]:
    """Mean relevance of the shown cluster vs. the rest and their difference, and its example
    inputs without and with the relevance overlay. Returns the HTML and the difference map."""
    cl = _shown_cluster(entry)
    ids = [c["id"] for c in entry["clusters"]]
    if cl is None or len(ids) < 2 or len(ctx["means"]) != len(ids):
        return "", None
    c, j = entry["class"], ids.index(cl["id"])
    sizes = np.array([x["size"] for x in entry["clusters"]], dtype=np.float64)
    means = ctx["means"].astype(np.float64)
    rest = _rest_mean(means, sizes, j)
    diff = means[j] - rest
    lim = float(max(np.abs(means[j]).max(), np.abs(rest).max())) or 1.0
    strip = png_strip([[heat_rgb(means[j], lim), heat_rgb(rest, lim), heat_rgb(diff)]],
                      out / f"class_{c}_suspect.png")
    word = "suspect" if cl.get("suspect") else "candidate"
    parts = [f"<figure>{img_tag(strip, f'mean relevance of the {word} cluster against the rest')}"
             f"<figcaption>Left to right: mean relevance of cluster {_esc(cl['id'])} "
             f"({word}); of the rest of the class (same colour scale); their difference. Red: "
             f"positive relevance, blue: negative.</figcaption></figure>"]
    rows = [r for r in ctx["rows"] if ctx["labels"][r] == cl["id"]]
    if rows:
        plain = [input_rgb(ctx["inputs"][ctx["row_pos"][r]]) for r in rows]
        over = [overlay_rgb(ctx["inputs"][ctx["row_pos"][r]], ctx["maps"][r]) for r in rows]
        ex = png_strip([plain, over], out / f"class_{c}_suspect_examples.png")
        shown = ", ".join(str(int(ctx["index"][r])) for r in rows)
        parts.append(f"<figure>{img_tag(ex, f'{word} examples with and without relevance')}"
                     f"<figcaption>{len(rows)} examples of cluster {_esc(cl['id'])} (dataset "
                     f"indices {shown}): the inputs (top) and the same inputs with their "
                     f"relevance overlaid (bottom).</figcaption></figure>")
    return "<div class=tiles>" + "".join(parts) + "</div>", diff


def _cluster_figures(entry: dict, out: Path, ctx: dict) -> str:
    """One PNG for all clusters: per cluster a row of its mean relevance and example inputs,
    and under it the same inputs with their relevance overlaid."""
    rows, items = [], []
    for r, cl in enumerate(entry["clusters"]):
        if r >= len(ctx["means"]):
            break
        ex = [x for x in ctx["rows"] if ctx["labels"][x] == cl["id"]]
        rows.append([heat_rgb(ctx["means"][r])]
                    + [input_rgb(ctx["inputs"][ctx["row_pos"][x]]) for x in ex])
        rows.append([None] + [overlay_rgb(ctx["inputs"][ctx["row_pos"][x]], ctx["maps"][x])
                              for x in ex])
        mark = " — suspect" if cl.get("suspect") else ""
        items.append(f"<li><b>cluster {_esc(cl['id'])}{mark}</b>, n = {_fmt(cl['size'])}</li>")
    if not rows:
        return ""
    strip = png_strip(rows, out / f"class_{entry['class']}_clusters.png", tile=64)
    return (f"<figure>{img_tag(strip, 'mean relevance and examples per cluster')}<figcaption>"
            f"Two rows per cluster, top to bottom: <ul>{''.join(items)}</ul>"
            f"Left: the cluster's mean relevance (red +, blue −); right: example inputs, "
            f"and under them the same inputs with their relevance overlaid.</figcaption>"
            f"</figure>")


#: classes with relevance maps up to this many values are read whole (one read, not many)
READ_WHOLE = 4_000_000


def _read_views(cg) -> dict:
    """The arrays a class page shows, each read once."""
    rows = [int(r) for r in cg["example_rows"][:]]
    rel = cg["relevance"]
    whole = rel[:] if rel.size <= READ_WHOLE else None
    try:
        tsne = cg["tsne"][:]
    except KeyError:
        tsne = None
    return {"means": np.asarray(cg["cluster_mean_relevance"][:], dtype=np.float32),
            "rows": rows, "row_pos": {r: i for i, r in enumerate(rows)},
            "inputs": cg["example_inputs"][:], "labels": cg["labels"][:],
            "index": cg["index"][:], "tsne": tsne, "all_maps": whole,
            "maps": {r: (whole[r] if whole is not None else rel[r]) for r in rows}}


def _tsne_section(entry: dict, out: Path, ctx: dict) -> str:
    if ctx["tsne"] is None:
        return ""
    from spray.report.interactive import bokeh_script, tsne_item, tsne_page

    c = entry["class"]
    suspects = entry.get("suspect_clusters", [])
    title = f"t-SNE of the relevance, class {clean_label(entry['name'])} (coloured by cluster)"
    examples = {r: ctx["inputs"][i] for r, i in ctx["row_pos"].items()}
    item = tsne_item(ctx["tsne"], ctx["labels"], ctx["index"], suspects, title,
                     ctx["all_maps"], examples)
    tsne_page(out / f"class_{c}_tsne.html", item, bokeh_script(out), _esc(title),
              f"class_{c}.html", STYLE)
    return (f"<h2>t-SNE</h2>{scatter_svg(ctx['tsne'], ctx['labels'], suspects)}"
            f"{legend_html(ctx['labels'], suspects)}<p><a href='class_{c}_tsne.html'>"
            f"Interactive t-SNE</a>: hover a point for its relevance, tap one to list its "
            f"cluster's members.</p>")


def _class_page(run_dir: str, out: Path, entry: dict) -> None:
    """Render one class page and its figures (runs in a worker process)."""
    c = entry["class"]
    cg = open_class(run_dir, c)
    ctx = _read_views(cg)
    suspect_html, diff = _suspect_figures(entry, out, ctx)
    cl = _shown_cluster(entry)
    flagged, watch = entry["flagged"], bool(entry.get("watch"))
    name = clean_label(entry["name"])
    lead = ""
    if (flagged or watch) and cl is not None:
        lead = f"<p class=headline>{_esc(headline(entry, cl, diff, name))}</p>"
    verdict = ("FLAGGED — Clever-Hans candidate" if flagged else
               "watch — near the threshold" if watch else "not flagged")
    kind = " bad" if flagged else (" warn" if watch else "")
    warn = "".join(f"<p class=note>warning: {_esc(w)}</p>" for w in entry.get("warnings", []))
    gaps = ", ".join(f"{g:.4f}" for g in entry["eigengaps"][:10])
    body = (
        f"<p><a href='index.html'>← overview</a></p><h1>Class {_esc(name)} ({_esc(c)})</h1>"
        f"{lead}<p class='verdict{kind}'><b>{verdict}</b>: score "
        f"{_fmt(entry['score'], 2)} (threshold {_fmt(entry['threshold'], 2)}); "
        f"{_fmt(entry['n_samples'])} samples, model accuracy on them "
        f"{_fmt(entry['accuracy']) or 'unknown (no predictions)'}, "
        f"kNN k = {_fmt(entry['k'])}, eigengap K = {_fmt(entry['n_clusters'])} clusters"
        f"{_splits_note(entry)}.{_watch_note(entry)}</p>{warn}{_health_note(entry)}"
        f"<h2>Evidence</h2>{_evidence(entry)}{suspect_html}"
        f"<h2>Spectrum</h2>{spectrum_svg(entry['eigenvalues'], entry['n_clusters'])}"
        f"<p class=note>first eigengaps λ<sub>i+1</sub> − λ<sub>i</sub>: {gaps}</p>"
        f"<h2>Clusters</h2><div class=scroll><table><tr><th>cluster</th><th>size</th>"
        f"<th>fraction</th><th>φ relevance</th><th>φ input</th><th>contrast</th>"
        f"<th>stable contrast</th><th>size penalty</th><th>input randomness</th>"
        f"<th>randomness penalty</th><th>concentration</th><th>peak cell</th><th>score</th></tr>"
        f"{_cluster_rows(entry)}</table></div>{_cluster_figures(entry, out, ctx)}"
        f"{_tsne_section(entry, out, ctx)}"
        f"<p class=note>run config hash <code>{_esc(entry.get('_config_hash', ''))}</code></p>")
    (out / f"class_{c}.html").write_text(
        PAGE.format(title=_esc(f"spray: class {name}"), style=STYLE, body=body),
        encoding="utf-8")


def _render_batch(run_dir: str, out: str, entries: list[dict]) -> list[int]:
    """Worker entry point: render a batch of class pages; returns their classes."""
    for entry in entries:
        _class_page(run_dir, Path(out), entry)
    return [e["class"] for e in entries]


# ------------------------------------------------------------------------------ overview

def _ranked(classes: list[dict]) -> list[dict]:
    return sorted(classes, key=lambda e: (e["score"] is None, -(e["score"] or 0.0), e["class"]))


def _overview_spectra(ok: list[dict]) -> str:
    """Small multiples of the top-ranked classes' spectra on a shared scale (inline SVG)."""
    shown = ok[:OVERVIEW_CLASSES]
    top = max((max(e["eigenvalues"][:OVERVIEW_EIGENVALUES]) for e in shown if e["eigenvalues"]),
              default=1.0)
    cells = []
    for e in shown:
        colour = "#d62728" if e["flagged"] else ("#d98c00" if e.get("watch") else "#1f77b4")
        score = "" if e.get("score") is None else f" · {e['score']:.2f}"
        cells.append(f"<a href='class_{_esc(e['class'])}.html'>" + spectrum_svg(
            e["eigenvalues"][:OVERVIEW_EIGENVALUES], e["n_clusters"],
            title=f"{clean_label(e['name'], 22)}{score}", width=230, height=150, top=top,
            colour=colour, small=True) + "</a>")
    more = (f" The other {len(ok) - len(shown)} classes are in the table above and on their "
            f"pages." if len(ok) > len(shown) else "")
    return (f"<h2>Spectra</h2><p class=note>λ1..λ{OVERVIEW_EIGENVALUES} of L_sym of the "
            f"{len(shown)} highest-scoring classes on one scale (red: flagged, orange: watch; "
            f"shaded: the chosen gap).{more}</p><div class=multiples>{''.join(cells)}</div>")


def _class_row(rank: int, e: dict) -> str:
    if e["status"] != "ok":
        return (f"<tr><td>{rank}</td><td class=l>{_name(e, 40)}</td>"
                f"<td colspan=9 class=l>{_esc(e['status'])}: {_esc(e.get('reason', ''))}</td></tr>")
    cl = _shown_cluster(e) or {}
    ev = ", ".join(f"{v:.3f}" for v in e["eigenvalues"][:5])
    css = " class=flag" if e["flagged"] else (" class=watch" if e.get("watch") else "")
    return (f"<tr{css}><td>{rank}</td>"
            f"<td class=l><a href='class_{_esc(e['class'])}.html'>{_name(e, 40)}</a></td>"
            f"<td>{_fmt(e['n_samples'])}</td><td>{_fmt(e['score'], 2)}</td>"
            f"<td class=l>{_verdict_word(e)}</td>"
            f"<td>{_fmt(cl.get('size'))}</td><td>{_fmt(cl.get('contrast'), 2)}</td>"
            f"<td>{_fmt(cl.get('concentration'), 2)}</td>"
            f"<td>{_fmt(e['n_clusters'])}</td><td>{_fmt(e.get('accuracy'))}</td>"
            f"<td class=l>{ev}</td></tr>")


def _headlines(ranked: list[dict], headlines: dict) -> str:
    shown = [e for e in ranked if str(e["class"]) in headlines]
    items = []
    for e in shown:
        word = "FLAGGED" if e["flagged"] else "watch"
        items.append(f"<li><b>{word}</b> <a href='class_{_esc(e['class'])}.html'>"
                     f"{_name(e, 60)}</a> (score {_fmt(e['score'], 2)}): "
                     f"{_esc(headlines[str(e['class'])])}</li>")
    n_more = sum(1 for e in ranked if e["status"] == "ok" and (e["flagged"] or e.get("watch")))
    more = (f"<p class=note>… and {n_more - len(shown)} more flagged or watched classes in the "
            f"table below.</p>" if n_more > len(shown) else "")
    return (f"<ul>{''.join(items)}</ul>{more}") if items else ""


def _class_links(classes: list[dict], limit: int = 60) -> str:
    links = ", ".join(f"<a href='class_{_esc(e['class'])}.html'>{_name(e, 40)}</a>"
                      for e in classes[:limit])
    return links + (f" … and {len(classes) - limit} more" if len(classes) > limit else "")


def _index_page(run_dir: Path, out: Path, summary: dict, header: str, headlines: dict) -> None:
    ranked = _ranked(summary["classes"])
    ok = [e for e in ranked if e["status"] == "ok"]
    flagged = _class_links([e for e in ranked if e["flagged"]]) or "none"
    watch = [e for e in ranked if e.get("watch") and not e["flagged"]]
    watch_line = ("<br><b>Watch</b> (near the threshold, never failing): " + _class_links(watch)
                  if watch else "")
    body = (f"<h1>spray report</h1>{header}"
            f"<p class='verdict{' bad' if summary['flagged'] else ''}'><b>Flagged classes:</b> "
            f"{flagged}{watch_line}</p>{_headlines(ranked, headlines)}"
            f"<h2>Classes ranked by Clever-Hans score</h2><div class=scroll>"
            f"<table><tr><th>rank</th><th class=l>class</th><th>n</th><th>score</th>"
            f"<th class=l>verdict</th><th>suspect / candidate size</th><th>contrast</th>"
            f"<th>concentration</th><th>K (eigengap)</th><th>accuracy</th>"
            f"<th class=l>λ1..λ5</th></tr>"
            f"{''.join(_class_row(r, e) for r, e in enumerate(ranked, 1))}</table></div>"
            f"<p class=note>Score: bootstrap-stable log ratio of the cluster's conductance in the "
            f"raw-input kNN graph over that in the relevance kNN graph (details on the class "
            f"pages), minus a size penalty for near-even splits and a randomness penalty for "
            f"clusters whose inputs form a group of the data even without the cells where "
            f"they differ most; flagged at or above the threshold. Machine-readable: "
            f"<a href='summary.json'>summary.json</a>.</p>"
            + (_overview_spectra(ok) if ok else ""))
    (out / "index.html").write_text(PAGE.format(title="spray report", style=STYLE, body=body),
                                    encoding="utf-8")


# ------------------------------------------------------------------------------ driver

def _page_hash(entry: dict, config_hash) -> str:
    payload = json.dumps([RENDER_VERSION, config_hash, entry], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _load_state(out: Path) -> dict:
    try:
        state = json.loads((out / STATE_FILE).read_text())
        old = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {"attrs": {}, "pages": {}, "entries": {}, "headlines": {}}
    if state.get("version") != RENDER_VERSION:
        return {"attrs": {}, "pages": {}, "entries": {}, "headlines": {}}
    state["entries"] = {str(e["class"]): e for e in old.get("classes", [])
                        if e.get("status") == "ok"}
    return state


def _headline_of(run_dir: str, entry: dict) -> str:
    """The headline of a flagged or watched class (for the overview)."""
    cl = _shown_cluster(entry)
    if cl is None:
        return ""
    ids = [c["id"] for c in entry["clusters"]]
    means = np.asarray(open_class(run_dir, entry["class"])["cluster_mean_relevance"][:],
                       dtype=np.float64)
    diff = None
    if len(ids) >= 2 and len(means) == len(ids):
        sizes = np.array([c["size"] for c in entry["clusters"]], dtype=np.float64)
        j = ids.index(cl["id"])
        diff = means[j] - _rest_mean(means, sizes, j)
    return headline(entry, cl, diff, clean_label(entry["name"]))


class _Pool:
    """A process pool started on first use (``spawn``: no fork of a process holding threads),
    for work large enough to pay for its start; small work runs in this process."""

    def __init__(self, processes: int | None):
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count())
        self.workers = processes or min(cores or 1, 8)
        self.pool = None

    def map_batches(self, fn, run_dir: str, out: str, items: list, on_done=None) -> list:
        """``fn(run_dir, out, batch)`` over batches of ``items``; results in item order."""
        if self.workers <= 1 or len(items) < POOL_MIN_PAGES:
            results = []
            for item in items:
                results.extend(fn(run_dir, out, [item]))
                if on_done:
                    on_done(1)
            return results
        if self.pool is None:
            import multiprocessing

            self.pool = ProcessPoolExecutor(max_workers=self.workers,
                                            mp_context=multiprocessing.get_context("spawn"))
        size = max(1, min(25, len(items) // (4 * self.workers)))
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        futures = {self.pool.submit(fn, run_dir, out, b): i for i, b in enumerate(batches)}
        parts = [None] * len(batches)
        for fut in as_completed(futures):
            parts[futures[fut]] = fut.result()
            if on_done:
                on_done(len(parts[futures[fut]]))
        return [r for part in parts for r in part]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _read_batch(run_dir: str, out: str, keys: list[str]) -> list[dict]:
    """Worker entry point: summary entries of a batch of classes."""
    return read_class_entries(run_dir, keys)


def _render(pool: _Pool, run_dir: Path, out: Path, todo: list[dict], progress: bool) -> None:
    """Render the class pages of ``todo``, showing the report stage's progress."""
    from spray.progress import StageProgress

    with StageProgress("report", len(todo), "pages",
                       enabled=progress and log.isEnabledFor(logging.INFO)) as bar:
        pool.map_batches(_render_batch, str(run_dir), str(out), todo, bar.update)


def _plan_pages(out: Path, summary: dict, state: dict) -> tuple[dict, list, dict]:
    """Page hashes, the pages to render (entry changed or page missing) and the overview's
    headlines (None: to compute)."""
    config_hash = summary.get("config_hash")
    pages, todo, existing = {}, [], set(os.listdir(out))
    for entry in summary["classes"]:
        if entry["status"] != "ok":
            continue
        key = str(entry["class"])
        pages[key] = _page_hash(entry, config_hash)
        if pages[key] != state["pages"].get(key) or f"class_{key}.html" not in existing:
            todo.append({**entry, "_config_hash": config_hash})
    headlines = {}
    for entry in _ranked(summary["classes"]):
        if len(headlines) == OVERVIEW_HEADLINES:
            break
        if entry["status"] == "ok" and (entry["flagged"] or entry.get("watch")):
            key = str(entry["class"])
            same = pages[key] == state["pages"].get(key)
            headlines[key] = state["headlines"].get(key) if same else None
    return pages, todo, headlines


def write_report(run_dir: str | Path, processes: int | None = None,
                 progress: bool = True) -> Path:
    """(Re)write ``RUN_DIR/report`` from the store; returns the path of index.html.

    Only classes whose summary entry changed since the last report are rendered again
    (``processes``: size of the process pool, default the usable cores up to 8).
    """
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    attrs = class_fingerprints(run_dir)
    reuse = {k: e for k, e in state["entries"].items()
             if attrs.get(k) is not None and state["attrs"].get(k) == attrs[k]}
    pool = _Pool(processes)
    try:
        stale = sorted((k for k in attrs if k not in reuse), key=int)
        fresh = pool.map_batches(_read_batch, str(run_dir), str(out), stale)
        reuse.update({str(e["class"]): e for e in fresh if e.get("status") == "ok"})
        summary = write_summary(run_dir, reuse)
        pages, todo, headlines = _plan_pages(out, summary, state)
        # the state is cleared first: an interrupted render is redone in full next time
        (out / STATE_FILE).unlink(missing_ok=True)
        _render(pool, run_dir, out, todo, progress and bool(todo))
    finally:
        pool.close()
    for key in headlines:
        if headlines[key] is None:
            entry = next(e for e in summary["classes"] if str(e["class"]) == key)
            headlines[key] = _headline_of(str(run_dir), entry)
    _index_page(run_dir, out, summary, _run_header(run_dir, summary, _load_config(run_dir)),
                headlines)
    (out / STATE_FILE).write_text(json.dumps({"version": RENDER_VERSION, "attrs": attrs,
                                              "pages": pages, "headlines": headlines}))
    return out / "index.html"
