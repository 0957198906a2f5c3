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
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import yaml

from spray.report.class_page import _render_batch, _rest_mean
from spray.report.figures import (
    clean_label,
    spectrum_svg,
)
from spray.report.headline import headline
from spray.report.markup import PAGE, STYLE, _esc, _fmt, _name, _shown_cluster, _verdict_word
from spray.report.summary import class_fingerprints, read_class_entries, write_summary
from spray.skill import learnt, max_chance_p, skill_text
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


def _load_config(run_dir: Path) -> dict:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _threshold_text(flags: dict, ok: list[dict]) -> str:
    """The threshold the classes were judged at (their entries'; with
    ``flags.false_flag_rate``, the rate it came from)."""
    used = sorted({e["threshold"] for e in ok if e.get("threshold") is not None})
    shown = ", ".join(f"{t:g}" for t in used) if used else flags.get("threshold", "")
    text = f"threshold <code>{_esc(shown)}</code>"
    if flags.get("false_flag_rate") is not None:
        text += (f" (from <code>false_flag_rate</code> {_esc(flags['false_flag_rate'])} of "
                 f"the clean-score reference)")
    return text


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
        ("model skill", _skill_html(summary)),
        ("relevance", f"LRP composite <code>{_esc(attribution.get('composite', '?'))}</code>, "
                      f"target <code>{_esc(attribution.get('target', 'label'))}</code>"),
        ("analysis", f"pipeline <code>{_esc(pipe_name or '?')}</code>"
                     + (f", pooled to <code>{_esc(pre.get('pool'))}</code>, "
                        f"normalize <code>{_esc(pre.get('normalize'))}</code>" if pre else "")),
        ("verdict", f"rule <code>{_esc(flags.get('score', 'input-contrast'))}</code>, "
                    f"{_threshold_text(flags, ok)}"),
        ("classes", f"{len(ok)} analysed of {len(summary['classes'])}, {n_total} samples"),
        ("run", f"<code>{_esc(run_dir.resolve())}</code>, config hash "
                f"<code>{_esc(summary.get('config_hash'))}</code>"),
        ("written", f"{_esc(summary.get('created'))} by spray {_esc(summary.get('spray_version'))}"),
    ]
    return "<dl class=run>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _skill_html(summary: dict) -> str:
    """The model's accuracy on the analysed samples against chance, and whether the gate takes
    it as learnt (:mod:`spray.skill`)."""
    skill = summary.get("model_skill")
    if not skill or skill.get("p_value") is None:
        return "not measured (fewer than two classes with known predictions)"
    refused = learnt(skill, max_chance_p(summary.get("health_limits"))) is False
    return _esc(skill_text(skill)) + (" <b>— not above chance: the gate refuses this run</b>"
                                      if refused else "")


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
            f"they differ most; flagged at or above the threshold (or, with the opt-in "
            f"transplant_reach, below it when the model is shown to follow the suspect's "
            f"pieces). Machine-readable: "
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
