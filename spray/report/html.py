"""Per-class eigengap reports and the run overview, built only from what is in the store.

Writes ``RUN_DIR/report/summary.json`` (schema in the README), ``index.html`` (what was run,
when, on what; classes ranked by Clever-Hans score; the smallest eigenvalues of every class side
by side) and one page per class (spectrum with the chosen gap, the flag and its evidence, each
cluster's mean relevance next to example inputs with relevance overlays, the suspect's mean
relevance against the rest of the class, t-SNE coloured by cluster with the suspect marked).
PNGs lie beside the HTML and no script is used, so the report works from a file or a CI artifact.
Every string that comes from the data or the config is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from spray.report.summary import write_summary  # noqa: E402
from spray.store import open_store  # noqa: E402

#: eigenvalues shown per class in the overview figure
OVERVIEW_EIGENVALUES = 12


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


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


# ------------------------------------------------------------------------------ figures

def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _plot_spectrum(entry: dict, path: Path) -> str:
    ev = np.asarray(entry["eigenvalues"])
    fig, ax = plt.subplots(figsize=(5.5, 3))
    ax.plot(np.arange(1, len(ev) + 1), ev, "o-", ms=3)
    k = entry["n_clusters"]
    if 0 < k < len(ev):
        ax.axvspan(k + 0.05, k + 0.95, color="tab:red", alpha=0.2,
                   label=f"chosen gap λ{k}→λ{k + 1}: K = {k}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("index i")
    ax.set_ylabel("eigenvalue λ_i of L_sym")
    ax.set_title(f"{entry['name']}: smallest eigenvalues", fontsize=9)
    return _save(fig, path)


def _plot_overview(entries: list[dict], path: Path) -> str:
    """Small multiples: the smallest eigenvalues of every class, side by side, in rank order."""
    n = len(entries)
    cols = min(n, 5)
    rows = int(math.ceil(n / cols))
    top = max((max(e["eigenvalues"][:OVERVIEW_EIGENVALUES]) for e in entries if e["eigenvalues"]),
              default=1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.9 * rows), squeeze=False,
                             sharey=True)
    for ax, e in zip(axes.ravel(), entries):
        ev = np.asarray(e["eigenvalues"][:OVERVIEW_EIGENVALUES])
        colour = "tab:red" if e["flagged"] else "tab:blue"
        ax.plot(np.arange(1, len(ev) + 1), ev, "o-", ms=2.5, color=colour)
        k = e["n_clusters"]
        if 0 < k < len(ev):
            ax.axvspan(k + 0.05, k + 0.95, color=colour, alpha=0.15)
        score = "" if e.get("score") is None else f" · {e['score']:.2f}"
        ax.set_title(f"{str(e['name'])[:18]}{score}", fontsize=8,
                     color=colour, fontweight="bold" if e["flagged"] else "normal")
        ax.set_ylim(-0.02 * top, top * 1.05)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"λ1..λ{OVERVIEW_EIGENVALUES} of L_sym per class, ranked by Clever-Hans score "
                 "(red: flagged; shaded: chosen gap)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _show_input(ax, img: np.ndarray) -> None:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)
    if img.ndim == 3:
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img)
    else:
        ax.imshow(img, cmap="gray")


def _plot_clusters(cg, entry: dict, path: Path) -> str:
    means = cg["cluster_mean_relevance"][:]
    rows, inputs = cg["example_rows"][:], cg["example_inputs"][:]
    labels, maps = cg["labels"][:], cg["relevance"]
    ids = [cl["id"] for cl in entry["clusters"]]
    n_ex = max(1, max(int(np.sum(labels[rows] == i)) for i in ids))
    fig, axes = plt.subplots(len(ids), n_ex + 1, figsize=(1.3 * (n_ex + 1), 1.45 * len(ids)),
                             squeeze=False)
    row_list = list(rows)
    for r, cid in enumerate(ids):
        m = np.asarray(means[r], dtype=np.float32)
        lim = float(np.abs(m).max()) or 1.0
        axes[r, 0].imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
        mark = " SUSPECT" if cid in entry.get("suspect_clusters", []) else ""
        axes[r, 0].set_title(f"cluster {cid}{mark}\nmean relevance, n={int(np.sum(labels == cid))}",
                             fontsize=6.5, color="tab:red" if mark else "black")
        for j, row in enumerate(rows[labels[rows] == cid]):
            _show_input(axes[r, j + 1], inputs[row_list.index(row)])
            rel = np.asarray(maps[int(row)], dtype=np.float32)
            lim_r = float(np.abs(rel).max()) or 1.0
            axes[r, j + 1].imshow(rel, cmap="bwr", vmin=-lim_r, vmax=lim_r, alpha=0.45)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    fig.suptitle("left: mean relevance per cluster (red +, blue −) | right: example inputs with "
                 "their relevance overlaid", fontsize=7)
    return _save(fig, path)


def _plot_suspect(cg, entry: dict, path: Path) -> str | None:
    """Mean relevance of the suspect (or best candidate) vs. the rest of the class, and Δ."""
    cid = entry.get("suspect_cluster")
    if cid is None:
        cid = entry.get("candidate_cluster")
    if cid is None:
        return None
    ids = [cl["id"] for cl in entry["clusters"]]
    sizes = np.array([cl["size"] for cl in entry["clusters"]], dtype=np.float64)
    means = np.asarray(cg["cluster_mean_relevance"][:], dtype=np.float64)
    if cid not in ids or len(ids) < 2 or len(means) != len(ids):
        return None
    j = ids.index(cid)
    rest_w = np.delete(sizes, j)
    rest = np.tensordot(rest_w / rest_w.sum(), np.delete(means, j, axis=0), axes=1)
    panels = [(means[j], f"cluster {cid}: mean relevance"), (rest, "rest of the class"),
              (means[j] - rest, "difference (cluster − rest)")]
    fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.4))
    for ax, (img, title) in zip(axes, panels):
        lim = float(np.abs(img).max()) or 1.0
        ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def _plot_tsne(cg, entry: dict, path: Path) -> str | None:
    if "tsne" not in cg:
        return None
    xy, labels = cg["tsne"][:], cg["labels"][:]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    suspects = entry.get("suspect_clusters", [])
    for cid in np.unique(labels):
        sel = labels == cid
        is_s = cid in suspects
        ax.scatter(xy[sel, 0], xy[sel, 1], s=16 if is_s else 6,
                   label=f"{cid}{' (suspect)' if is_s else ''}",
                   edgecolors="k" if is_s else "none", linewidths=0.5, zorder=3 if is_s else 2)
    for cid in suspects:
        if np.any(labels == cid):
            cx, cy = np.median(xy[labels == cid], axis=0)
            ax.annotate("suspect", (cx, cy), xytext=(10, 10), textcoords="offset points",
                        fontsize=8, color="tab:red", fontweight="bold",
                        arrowprops={"arrowstyle": "->", "color": "tab:red"}, zorder=4)
    ax.set_title(f"t-SNE of the relevance, {entry['name']} (coloured by cluster)", fontsize=8)
    ax.legend(fontsize=6, markerscale=1.5, title="cluster", title_fontsize=6, loc="upper right")
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


# ------------------------------------------------------------------------------ pages

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1150px;padding:0 1em;
color:#222}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:.9em}}
th{{background:#f3f3f3}}td.l,th.l{{text-align:left}}.flag{{background:#fdd}}
.cand{{background:#fff6dd}}img{{max-width:100%}}code{{background:#f4f4f4;padding:0 .2em}}
.verdict{{font-size:1.1em;padding:.5em .8em;border-left:5px solid #4a4}}
.verdict.bad{{border-color:#c33;background:#fff3f3}}dl.run{{display:grid;
grid-template-columns:max-content auto;gap:.15em 1em;font-size:.9em}}dl.run dt{{color:#666}}
dl.run dd{{margin:0}}.note{{color:#555;font-size:.9em}}</style></head>
<body>{body}</body></html>
"""


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
        rows.append(
            f"<tr{cls}><td>{_esc(cl['id'])}{' (suspect)' if cl.get('suspect') else ''}"
            f"{_split_note(cl)}</td>"
            f"<td>{_fmt(cl['size'])}</td><td>{_fmt(cl['fraction'])}</td>"
            f"<td>{_fmt(cl.get('conductance_relevance'), 4)}</td>"
            f"<td>{_fmt(cl.get('conductance_input'), 4)}</td><td>{_fmt(cl.get('contrast'), 2)}</td>"
            f"<td>{'not resampled' if cl.get('resampled') is False else _fmt(cl.get('contrast_stable'), 2)}"
            f"</td><td>{_fmt(cl.get('size_penalty'), 2)}</td>"
            f"<td>{_fmt(cl.get('input_randomness'), 2)}</td>"
            f"<td>{_fmt(cl.get('randomness_penalty'), 2)}</td>"
            f"<td>{_fmt(cl.get('concentration'), 2)}</td>"
            f"<td>{_esc(peak) if peak is not None else ''}</td>"
            f"<td>{_fmt(cl.get('score'), 2)}{' ' + _esc(cl['excluded']) if cl.get('excluded') else ''}"
            f"</td></tr>")
    return "".join(rows)


def _evidence(entry: dict) -> str:
    cid = entry.get("suspect_cluster")
    cid = entry.get("candidate_cluster") if cid is None else cid
    cl = next((c for c in entry["clusters"] if c["id"] == cid), None)
    if cl is None or "contrast" not in cl:
        return "<p>No cluster is a candidate (none holds between the size limits of the rule).</p>"
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
        parts.append(f"The analysis had it in cluster {_esc(cl['split_from'])} together with "
                     f"{_fmt(parent.get('size'))} other samples; the spectral bisection of that "
                     f"cluster separates them, and this side scores higher than the whole "
                     f"cluster, so it is shown as a cluster of its own (<code>bisect_clusters"
                     f"</code>).")
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


def _class_page(run_dir: Path, out: Path, cg, entry: dict, header: str) -> None:
    c = entry["class"]
    spectrum = _plot_spectrum(entry, out / f"class_{c}_spectrum.png")
    clusters = _plot_clusters(cg, entry, out / f"class_{c}_clusters.png")
    suspect = _plot_suspect(cg, entry, out / f"class_{c}_suspect.png")
    tsne = _plot_tsne(cg, entry, out / f"class_{c}_tsne.png")
    gaps = ", ".join(f"{g:.4f}" for g in entry["eigengaps"][:10])
    flagged = entry["flagged"]
    verdict = ("FLAGGED — Clever-Hans candidate" if flagged else "not flagged")
    warn = "".join(f"<p class=note>warning: {_esc(w)}</p>" for w in entry.get("warnings", []))
    body = (
        f"<p><a href='index.html'>← overview</a></p><h1>Class {_esc(entry['name'])} "
        f"({_esc(c)})</h1>{header}"
        f"<p class='verdict{' bad' if flagged else ''}'><b>{verdict}</b>: score "
        f"{_fmt(entry['score'], 2)} (threshold {_fmt(entry['threshold'], 2)}); "
        f"{_fmt(entry['n_samples'])} samples, model accuracy on them "
        f"{_fmt(entry['accuracy']) or 'unknown (no predictions)'}, "
        f"kNN k = {_fmt(entry['k'])}, eigengap K = {_fmt(entry['n_clusters'])} clusters"
        f"{_splits_note(entry)}.</p>{warn}"
        f"<h2>Evidence</h2>{_evidence(entry)}"
        + (f"<img src='{_esc(suspect)}' alt='mean relevance of the suspect cluster against the "
           f"rest of the class'>" if suspect else "")
        + f"<h2>Spectrum</h2><img src='{_esc(spectrum)}' alt='eigenvalues with the chosen gap'>"
        f"<p class=note>first eigengaps λ<sub>i+1</sub> − λ<sub>i</sub>: {gaps}</p>"
        f"<h2>Clusters</h2><table><tr><th>cluster</th><th>size</th><th>fraction</th>"
        f"<th>φ relevance</th><th>φ input</th><th>contrast</th><th>stable contrast</th>"
        f"<th>size penalty</th><th>input randomness</th><th>randomness penalty</th>"
        f"<th>concentration</th><th>peak cell</th><th>score</th></tr>"
        f"{_cluster_rows(entry)}</table>"
        f"<img src='{_esc(clusters)}' alt='cluster mean relevance and example inputs'>"
        + (f"<h2>t-SNE</h2><img src='{_esc(tsne)}' alt='t-SNE embedding coloured by cluster'>"
           if tsne else ""))
    (out / f"class_{c}.html").write_text(
        PAGE.format(title=_esc(f"spray: class {entry['name']}"), body=body), encoding="utf-8")


def _ranked(classes: list[dict]) -> list[dict]:
    return sorted(classes, key=lambda e: (e["score"] is None, -(e["score"] or 0.0), e["class"]))


def _index_page(run_dir: Path, out: Path, summary: dict, header: str) -> None:
    ranked = _ranked(summary["classes"])
    ok = [e for e in ranked if e["status"] == "ok"]
    overview = _plot_overview(ok, out / "overview_spectra.png") if ok else None
    rows = []
    for rank, e in enumerate(ranked, 1):
        if e["status"] != "ok":
            rows.append(f"<tr><td>{rank}</td><td class=l>{_esc(e['name'])}</td>"
                        f"<td colspan=9 class=l>{_esc(e['status'])}: "
                        f"{_esc(e.get('reason', ''))}</td></tr>")
            continue
        cid = e.get("suspect_cluster")
        cid = e.get("candidate_cluster") if cid is None else cid
        cl = next((x for x in e["clusters"] if x["id"] == cid), {})
        ev = ", ".join(f"{v:.3f}" for v in e["eigenvalues"][:5])
        rows.append(
            f"<tr{' class=flag' if e['flagged'] else ''}><td>{rank}</td>"
            f"<td class=l><a href='class_{_esc(e['class'])}.html'>{_esc(e['name'])}</a></td>"
            f"<td>{_fmt(e['n_samples'])}</td><td>{_fmt(e['score'], 2)}</td>"
            f"<td class=l>{'FLAGGED' if e['flagged'] else 'ok'}</td>"
            f"<td>{_fmt(cl.get('size'))}</td><td>{_fmt(cl.get('contrast'), 2)}</td>"
            f"<td>{_fmt(cl.get('concentration'), 2)}</td>"
            f"<td>{_fmt(e['n_clusters'])}</td><td>{_fmt(e.get('accuracy'))}</td>"
            f"<td class=l>{ev}</td></tr>")
    flagged = ", ".join(f"<a href='class_{_esc(e['class'])}.html'>{_esc(e['name'])}</a>"
                        for e in ranked if e["flagged"]) or "none"
    body = (f"<h1>spray report</h1>{header}"
            f"<p class='verdict{' bad' if summary['flagged'] else ''}'><b>Flagged classes:</b> "
            f"{flagged}</p>"
            f"<h2>Classes ranked by Clever-Hans score</h2>"
            f"<table><tr><th>rank</th><th class=l>class</th><th>n</th><th>score</th>"
            f"<th class=l>verdict</th><th>suspect / candidate size</th><th>contrast</th>"
            f"<th>concentration</th><th>K (eigengap)</th><th>accuracy</th>"
            f"<th class=l>λ1..λ5</th></tr>{''.join(rows)}</table>"
            f"<p class=note>Score: bootstrap-stable log ratio of the cluster's conductance in the "
            f"raw-input kNN graph over that in the relevance kNN graph (details on the class "
            f"pages), minus a size penalty for near-even splits and a randomness penalty for "
            f"clusters whose inputs form a group of the data even without the cells where "
            f"they differ most; flagged at or above the threshold. Machine-readable: "
            f"<a href='summary.json'>summary.json</a>.</p>"
            + (f"<h2>Spectra</h2><img src='{_esc(overview)}' alt='smallest eigenvalues of every "
               f"class side by side'>" if overview else ""))
    (out / "index.html").write_text(PAGE.format(title="spray report", body=body), encoding="utf-8")


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``RUN_DIR/report`` from the store; returns the path of index.html."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = write_summary(run_dir)
    header = _run_header(run_dir, summary, _load_config(run_dir))
    group = open_store(run_dir)
    for entry in summary["classes"]:
        if entry["status"] == "ok":
            _class_page(run_dir, out, group["classes"][str(entry["class"])], entry, header)
    _index_page(run_dir, out, summary, header)
    return out / "index.html"
