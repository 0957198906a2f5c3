"""Per-class eigengap reports and the run overview, built only from what is in the store.

Writes ``RUN_DIR/report/summary.json`` (schema in the README), ``index.html`` (classes ranked
by Clever-Hans score, all spectra side by side) and one page per class (spectrum with the chosen
gap, cluster sizes, mean relevance per cluster next to example inputs with relevance overlays,
t-SNE coloured by cluster with the suspect marked). PNGs lie beside the HTML, so the report works
from a file or a CI artifact.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from spray.store import open_store  # noqa: E402

MAX_MEMBERS = 100_000


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _class_entry(cg, c: int) -> dict:
    attrs = dict(cg.attrs)
    analysis = attrs.get("analysis")
    entry = {"class": int(c), "name": attrs.get("name", str(c)),
             "n_samples": int(attrs.get("n_samples", 0))}
    if analysis is None:
        entry.update({"status": "incomplete", "eigenvalues": [], "eigengaps": [],
                      "n_clusters": 0, "score": None, "flagged": False, "clusters": []})
        return entry
    flags = analysis["flags"]
    labels = cg["labels"][:]
    index = cg["index"][:]
    suspicious = {flags.get("suspect_cluster"), flags.get("candidate_cluster")} - {None}
    clusters = []
    for cl in flags["clusters"]:
        item = dict(cl)
        if cl["id"] in suspicious:
            item["members"] = [int(i) for i in index[labels == cl["id"]][:MAX_MEMBERS]]
        item["suspect"] = cl["id"] == flags.get("suspect_cluster")
        clusters.append(item)
    entry.update({
        "status": "ok", "eigenvalues": [float(v) for v in cg["eigenvalues"][:]],
        "eigengaps": [float(v) for v in cg["eigengaps"][:]],
        "n_clusters": int(analysis["n_clusters"]), "k": int(analysis["k"]),
        "score": float(flags["score"]), "threshold": float(flags["threshold"]),
        "flagged": bool(flags["flagged"]), "suspect_cluster": flags.get("suspect_cluster"),
        "clusters": clusters, "warnings": analysis.get("warnings", []),
        "accuracy": float(np.mean(cg["prediction"][:] == c)),
    })
    return entry


def build_summary(run_dir: Path) -> dict:
    """summary.json content: one entry per class plus the flagged list."""
    group = open_store(run_dir)
    classes = group["classes"] if "classes" in group else {}
    entries = [_class_entry(classes[key], int(key)) for key in sorted(classes, key=int)]
    for c, why in dict(group.attrs.get("skipped", {})).items():
        entries.append({"class": int(c), "name": str(c), "n_samples": None, "status": "skipped",
                        "reason": why, "eigenvalues": [], "eigengaps": [], "n_clusters": 0,
                        "score": None, "flagged": False, "clusters": []})
    for entry in entries:
        reason = dict(group.attrs.get("failed", {})).get(str(entry["class"]))
        if reason:
            entry.update({"status": "failed", "reason": reason, "flagged": False})
    entries.sort(key=lambda e: e["class"])
    return {"spray_version": group.attrs.get("spray_version"),
            "config_hash": group.attrs.get("config_hash"),
            "fingerprints": dict(group.attrs.get("fingerprints", {})),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "classes": entries,
            "flagged": [e["class"] for e in entries if e["flagged"]]}


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _plot_spectrum(entry: dict, path: Path) -> str:
    ev = np.asarray(entry["eigenvalues"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(ev) + 1), ev, "o-", ms=3)
    k = entry["n_clusters"]
    if 0 < k < len(ev):
        ax.axvspan(k + 0.05, k + 0.95, color="tab:red", alpha=0.2, label=f"chosen gap: K = {k}")
        ax.legend(loc="lower right")
    ax.set_xlabel("index i")
    ax.set_ylabel("eigenvalue λ_i of L_sym")
    ax.set_title(f"class {entry['name']}: smallest eigenvalues")
    return _save(fig, path)


def _plot_overview(entries: list[dict], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(8, 4))
    for e in entries:
        if e["eigenvalues"]:
            ax.plot(np.arange(1, len(e["eigenvalues"]) + 1), e["eigenvalues"], "o-", ms=2,
                    lw=2.5 if e["flagged"] else 1, label=str(e["name"]))
    ax.set_xlabel("index i")
    ax.set_ylabel("λ_i")
    ax.set_title("smallest eigenvalues of every class")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _plot_clusters(cg, entry: dict, path: Path) -> str:
    means = cg["cluster_mean_relevance"][:]
    rows, inputs = cg["example_rows"][:], cg["example_inputs"][:]
    labels, maps = cg["labels"][:], cg["relevance"]
    ids = [cl["id"] for cl in entry["clusters"]]
    n_ex = max(1, max(int(np.sum(labels[rows] == i)) for i in ids))
    fig, axes = plt.subplots(len(ids), n_ex + 1, figsize=(1.4 * (n_ex + 1), 1.5 * len(ids)),
                             squeeze=False)
    for r, cid in enumerate(ids):
        m = means[r]
        lim = float(np.abs(m).max()) or 1.0
        axes[r, 0].imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
        mark = " (suspect)" if cid == entry.get("suspect_cluster") else ""
        axes[r, 0].set_title(f"cluster {cid}{mark}\nn={np.sum(labels == cid)}", fontsize=7)
        for j, row in enumerate(rows[labels[rows] == cid]):
            img = inputs[list(rows).index(row)]
            img = img[0] if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)
            rel = maps[int(row)]
            lim_r = float(np.abs(rel).max()) or 1.0
            axes[r, j + 1].imshow(img, cmap="gray")
            axes[r, j + 1].imshow(rel, cmap="bwr", vmin=-lim_r, vmax=lim_r, alpha=0.45)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("mean relevance per cluster | example inputs with relevance overlay", fontsize=8)
    return _save(fig, path)


def _plot_tsne(cg, entry: dict, path: Path) -> str | None:
    if "tsne" not in cg:
        return None
    xy, labels = cg["tsne"][:], cg["labels"][:]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for cid in np.unique(labels):
        sel = labels == cid
        suspect = cid == entry.get("suspect_cluster")
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14 if suspect else 6, label=f"{cid}",
                   edgecolors="k" if suspect else "none", linewidths=0.4)
    ax.set_title(f"t-SNE, class {entry['name']} (coloured by cluster)")
    ax.legend(fontsize=6, markerscale=1.5, title="cluster", title_fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1100px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
.flag{{background:#fdd}}img{{max-width:100%}}code{{background:#f4f4f4}}</style></head>
<body>{body}</body></html>
"""


def _run_header(run_dir: Path, summary: dict) -> str:
    cfg_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    data, model = cfg.get("data", {}), cfg.get("model", {})
    attribution = cfg.get("attribution", {})
    return (f"<p>spray {_esc(summary['spray_version'])} · report written {_esc(summary['created'])}"
            f" · data: <code>{_esc(data.get('source'))} {_esc(data.get('path') or '')}</code>"
            f" · model: <code>{_esc(model.get('factory'))}</code>"
            f" · LRP composite: <code>{_esc(attribution.get('composite'))}</code>"
            f" · pipeline: <code>{_esc((cfg.get('pipeline') or {}).get('preset', ''))}</code>"
            f" · config hash <code>{_esc(summary['config_hash'])}</code></p>")


def _class_page(run_dir: Path, out: Path, cg, entry: dict) -> None:
    c = entry["class"]
    spectrum = _plot_spectrum(entry, out / f"class_{c}_spectrum.png")
    clusters = _plot_clusters(cg, entry, out / f"class_{c}_clusters.png")
    tsne = _plot_tsne(cg, entry, out / f"class_{c}_tsne.png")
    rows = "".join(
        f"<tr{' class=flag' if cl.get('suspect') else ''}><td>{cl['id']}</td><td>{cl['size']}</td>"
        f"<td>{cl['fraction']:.3f}</td><td>{cl.get('conductance_relevance', '')}</td>"
        f"<td>{cl.get('conductance_input', '')}</td><td>{cl.get('score', '')}</td></tr>"
        for cl in entry["clusters"])
    gaps = ", ".join(f"{g:.4f}" for g in entry["eigengaps"][:10])
    verdict = "FLAGGED — Clever-Hans candidate" if entry["flagged"] else "not flagged"
    warn = "".join(f"<p>warning: {_esc(w)}</p>" for w in entry.get("warnings", []))
    body = (f"<p><a href='index.html'>← overview</a></p><h1>Class {_esc(entry['name'])} "
            f"({c})</h1>{_run_header(run_dir, json.load(open(out / 'summary.json')))}"
            f"<p><b>{verdict}</b>: score {entry['score']:.3f} (threshold {entry['threshold']}); "
            f"{entry['n_samples']} samples, model accuracy on them {entry['accuracy']:.3f}, "
            f"kNN k = {entry['k']}, eigengap suggests K = {entry['n_clusters']} clusters.</p>{warn}"
            f"<h2>Spectrum</h2><img src='{spectrum}' alt='eigenvalues'><p>first gaps: {gaps}</p>"
            f"<h2>Clusters</h2><table><tr><th>cluster</th><th>size</th><th>fraction</th>"
            f"<th>conductance (relevance)</th><th>conductance (input)</th><th>score</th></tr>{rows}"
            f"</table><img src='{clusters}' alt='cluster mean relevance and examples'>"
            + (f"<h2>t-SNE</h2><img src='{tsne}' alt='t-SNE embedding'>" if tsne else ""))
    (out / f"class_{c}.html").write_text(PAGE.format(title=_esc(f"spray: class {entry['name']}"),
                                                     body=body))


def _index_page(run_dir: Path, out: Path, summary: dict) -> None:
    ok = [e for e in summary["classes"] if e["status"] == "ok"]
    overview = _plot_overview(ok, out / "overview_spectra.png") if ok else None
    ranked = sorted(summary["classes"], key=lambda e: -(e["score"] if e["score"] is not None else -1e9))
    rows = []
    for e in ranked:
        if e["status"] != "ok":
            rows.append(f"<tr><td>{_esc(e['name'])}</td><td colspan=6>{_esc(e['status'])}: "
                        f"{_esc(e.get('reason', ''))}</td></tr>")
            continue
        suspect = next((cl for cl in e["clusters"] if cl.get("suspect")), None)
        ev = ", ".join(f"{v:.3f}" for v in e["eigenvalues"][:5])
        rows.append(f"<tr{' class=flag' if e['flagged'] else ''}><td><a href='class_{e['class']}.html'>"
                    f"{_esc(e['name'])}</a></td><td>{e['n_samples']}</td><td>{e['score']:.3f}</td>"
                    f"<td>{'FLAGGED' if e['flagged'] else 'ok'}</td>"
                    f"<td>{suspect['size'] if suspect else ''}</td><td>{e['n_clusters']}</td>"
                    f"<td>{ev}</td></tr>")
    flagged = ", ".join(_esc(e["name"]) for e in summary["classes"] if e["flagged"]) or "none"
    body = (f"<h1>spray report</h1>{_run_header(run_dir, summary)}<p><b>Flagged classes:</b> "
            f"{flagged}</p><table><tr><th>class</th><th>n</th><th>score</th><th>verdict</th>"
            f"<th>suspect size</th><th>K (eigengap)</th><th>λ1..λ5</th></tr>{''.join(rows)}</table>"
            + (f"<h2>Spectra</h2><img src='{overview}' alt='eigenvalues of all classes'>"
               if overview else ""))
    (out / "index.html").write_text(PAGE.format(title="spray report", body=body))


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``RUN_DIR/report`` from the store; returns the path of index.html."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(run_dir)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    group = open_store(run_dir)
    for entry in summary["classes"]:
        if entry["status"] == "ok":
            _class_page(run_dir, out, group["classes"][str(entry["class"])], entry)
    _index_page(run_dir, out, summary)
    return out / "index.html"
