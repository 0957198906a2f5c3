"""One page per class: headline, spectrum, the flag and its evidence, clusters, the suspect
against the rest of the class, t-SNE (static and interactive), relevance health."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
from spray.report.markup import PAGE, STYLE, _esc, _fmt, _shown_cluster
from spray.store import open_class
from spray.verdict.calibration import rate_text


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
            f"<td>{_separating_conductance(cl)}</td>"
            f"<td>{_fmt(cl.get('conductance_input'), 4)}</td><td>{_fmt(cl.get('contrast'), 2)}</td>"
            f"<td>{stable}</td><td>{_fmt(cl.get('size_penalty'), 2)}</td>"
            f"<td>{_fmt(cl.get('input_randomness'), 2)}</td>"
            f"<td>{_fmt(cl.get('randomness_penalty'), 2)}</td>"
            f"<td>{_fmt(cl.get('colocation'), 2)}</td>"
            f"<td>{_fmt(cl.get('colocation_penalty'), 2)}</td>"
            f"<td>{_fmt(cl.get('concentration'), 2)}</td>"
            f"<td>{_esc(peak) if peak is not None else ''}</td>"
            f"<td>{_fmt(cl.get('score'), 2)}{excluded}</td></tr>")
    return "".join(rows)


def _separating_conductance(cl: dict) -> str:
    """The conductance the contrast divides by: the relevance graph's, or for an edge or a
    window cut the edge graph's or the peak windows' graph's (said so)."""
    if cl.get("cut_graph") == "edges":
        return f"{_fmt(cl.get('conductance_edges'), 4)} (edge graph)"
    if cl.get("cut_graph") == "windows":
        return f"{_fmt(cl.get('conductance_windows'), 4)} (peak windows)"
    return _fmt(cl.get("conductance_relevance"), 4)


def _member_notes(cl: dict) -> list[str]:
    """What the member steps did to a suspect (:mod:`spray.verdict.members`): who left it, who
    joined it and by which step."""
    notes: list[str] = []
    if cl.get("trimmed"):
        notes.append(f"{_fmt(cl['trimmed'])} samples the relevance graph put in this group do "
                     f"not carry its pattern at the hot spot (their inputs there are closer to "
                     f"the rest of the class; AUC {_fmt(cl.get('hot_spot_auc'), 2)}) and were "
                     f"moved to the cluster their graph edges weigh most: the {_fmt(cl['size'])} "
                     f"shown are the members that carry it.")
    if cl.get("pattern_trimmed"):
        notes.append(f"{_fmt(cl['pattern_trimmed'])} samples the relevance graph put in this "
                     f"group do not carry, in their own pixels at the hot spot, the pattern "
                     f"most of its members carry (pattern correlation as low as the rest of the "
                     f"class's) and were moved to the cluster their graph edges weigh most "
                     f"(<code>pattern_trim_iqr</code>).")
    if cl.get("joined"):
        notes.append(f"{_fmt(cl['joined'])} samples the relevance graph put elsewhere carry its "
                     f"pattern at the hot spot, and their relevance there is like its members' "
                     f"(both above the lower fence of the members that carry it): they were "
                     f"added to it.")
    if cl.get("pattern_joined"):
        notes.append(f"{_fmt(cl['pattern_joined'])} samples outside carry its members' pattern "
                     f"in their own pixels at the hot spot (pattern correlation at or above the "
                     f"lower fence of the members'): they were added to it.")
    if cl.get("agreed_joined"):
        notes.append(f"{_fmt(cl['agreed_joined'])} samples outside have, in their own pixels at "
                     f"the hot spot, the values its members agree on (as close to them as the "
                     f"members are; <code>agreement_spread</code>): they were added to it.")
    if cl.get("anywhere_joined"):
        notes.append(f"{_fmt(cl['anywhere_joined'])} samples outside have the values its members "
                     f"agree on at another place of their image, one that several of them share, or "
                     f"at the members' own (<code>agreement_anywhere</code>): they were added to it.")
    if cl.get("peak_joined"):
        apart = (" (the samples outside were not below that fence as a whole, but these stand "
                 "apart from the rest of them: <code>peak_carrier_gap</code>)"
                 if cl.get("peak_guard") == "apart" else
                 " (most of the samples outside lie below that fence; the group was cut from "
                 "the peak windows' graph, whose carriers are mostly outside it)"
                 if cl.get("peak_guard") == "median" else "")
        where = ("at the place where their relevance differs from the rest's"
                 if cl.get("peak_at") == "region" else "where the model looks at them")
        notes.append(f"{_fmt(cl['peak_joined'])} samples outside carry, somewhere in their "
                     f"image, its members' pattern {where} (best match "
                     f"with a window of {_fmt(cl.get('peak_window'))} pixels at or above the "
                     f"lower fence of the members' or, where lower, the far fences of the rest "
                     f"outside and of the members, <code>peak_far_iqr</code>{apart}): they "
                     f"were added to it.")
    if cl.get("peak_off_place"):
        notes.append(f"{_fmt(cl['peak_off_place'])} samples outside carry its members' "
                     f"pattern somewhere in their image as closely as that step asks, but its "
                     f"members match at fixed places and these match elsewhere — neither near "
                     f"a place two members share nor where two more such samples match: "
                     f"look-alikes, left out (<code>peak_place_share</code>, "
                     f"<code>peak_place_carriers</code>).")
    if cl.get("aligned_joined") or cl.get("aligned_trimmed"):
        notes.append(f"Where the model looks at its members, aligned on their best match, they "
                     f"agree value by value on a pattern; {_fmt(cl.get('aligned_joined') or 0)} "
                     f"samples outside carry it somewhere in their image and were added, "
                     f"{_fmt(cl.get('aligned_trimmed') or 0)} members far from it left "
                     f"(<code>aligned_agreement</code>).")
    return notes


#: a sweep cut's own graph (``cut_graph``): its conductance's key, how the page names the
#: graph and the contrast's denominator
_CUT_GRAPHS = {"edges": ("conductance_edges", "the graph of its inputs' edge energy", "edges"),
               "windows": ("conductance_windows", "the graph of the samples' peak windows, "
                           "each sample's raw input where its relevance is densest, wherever "
                           "that is,", "windows")}


def _contrast_text(cl: dict, graph: str) -> str:
    """The contrast sentence: against the relevance graph, or the edge graph for an edge cut,
    or the peak windows' graph for a window cut."""
    own = _CUT_GRAPHS.get(cl.get("cut_graph"))
    if own is not None:
        key, name, short = own
        return (f"Its conductance is {_fmt(cl.get(key), 4)} in {name} "
                f"({_fmt(cl['conductance_relevance'], 4)} in the relevance graph) and "
                f"{_fmt(cl['conductance_input'], 4)} in {graph}: contrast "
                f"log(φ_input/φ_{short}) = {_fmt(cl['contrast'], 2)}")
    return (f"Its conductance is {_fmt(cl['conductance_relevance'], 4)} in the relevance graph "
            f"and {_fmt(cl['conductance_input'], 4)} in {graph}: contrast "
            f"log(φ_input/φ_relevance) = {_fmt(cl['contrast'], 2)}")


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
             _contrast_text(cl, graph),
             f"(bootstrap-stable value {_fmt(cl.get('contrast_stable'), 2)}, size penalty "
             f"{_fmt(cl.get('size_penalty'), 2)}, randomness penalty "
             f"{_fmt(cl.get('randomness_penalty'), 2)}"
             + ("" if cl.get("cut_graph") == "windows" else
                f", colocation penalty {_fmt(cl.get('colocation_penalty') or 0.0, 2)}")
             + (f", edge randomness {_fmt(cl['edge_randomness'], 2)} and its penalty "
                f"{_fmt(cl.get('edge_penalty'), 2)}" if cl.get("edge_randomness") is not None
                else "")
             + (f", hot-spot separation {_fmt(cl['hot_spot_separation'], 2)} and its penalty "
                f"{_fmt(cl.get('hot_spot_penalty'), 2)}"
                if cl.get("hot_spot_separation") is not None else "")
             + (f", hot-spot mass {_fmt(cl['hot_spot_mass'], 3)} and its penalty "
                f"{_fmt(cl.get('hot_spot_mass_penalty'), 2)}"
                if cl.get("hot_spot_mass") is not None else "")
             + (f", window mass {_fmt(cl['window_mass'], 3)} and its penalty "
                f"{_fmt(cl.get('window_mass_penalty'), 2)}"
                if cl.get("window_mass") is not None else "")
             + f") → score {_fmt(cl.get('score'), 2)} "
             f"against the threshold {_fmt(entry.get('threshold'), 2)}."]
    if entry.get("scored_on") is not None:
        parts.append(f"The class is large: its evidence was measured on a stratified random "
                     f"subsample of {_fmt(entry['scored_on'])} samples "
                     f"(<code>score_max_samples</code>); sizes and members count the whole "
                     f"class.")
    if cl.get("split_from") is not None:
        parent = next((c for c in entry["clusters"] if c["id"] == cl["split_from"]), {})
        if cl.get("cut_along") is not None:
            graph, flag = {"edges": ("inputs' edge graph", "edge_sweep_eigenvectors"),
                           "windows": ("peak windows' graph", "window_sweep_eigenvectors")
                           }.get(cl.get("cut_graph"), ("relevance graph", "sweep_eigenvectors"))
            how = (f"a sweep cut along eigenvector {_esc(cl['cut_along'])} of the {graph} "
                   "separates them, and the cut scores higher than the clusters it takes "
                   f"samples from, so it is shown as a cluster of its own (<code>{flag}"
                   "</code>).")
        else:
            how = ("the spectral bisection of that cluster separates them, and this side scores "
                   "higher than the whole cluster, so it is shown as a cluster of its own "
                   "(<code>bisect_clusters</code>).")
        parts.append(f"The analysis had it in cluster {_esc(cl['split_from'])} together with "
                     f"{_fmt(parent.get('size'))} other samples; {how}")
    parts += _member_notes(cl)
    if cl.get("input_randomness") is not None:
        where = _footprint_text(params, mask_area)
        parts.append(f"Its inputs, {where}, have {_fmt(cl['input_randomness'], 2)} × the "
                     f"conductance of a random subset of the same size (input randomness; about 1 "
                     f"= no group apart from a local mark, as for an artefact stamped on random "
                     f"members; well below 1 = a sub-group of the data).")
    if cl.get("colocation") is not None:
        where = ("the cells where its relevance differs most or in the regions of that "
                 "difference they touch" if _regions_counted(cl, params) else
                 "the cells where its relevance differs most")
        parts.append(f"{100 * float(cl['colocation']):.0f} % of the cells' input difference beyond "
                     f"chance (Welch t above the noise level) lies in {where} (colocation; "
                     f"an artefact is seen where the model looks, a natural sub-group differs "
                     f"elsewhere too).")
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


def _footprint_text(params: dict, mask_area: float) -> str:
    """Which input cells the input randomness leaves out, as the verdict's flags say (a verdict
    stored before the footprint rule has no ``input_mask_max_area``: its fixed share)."""
    if mask_area <= 0:
        return "as they are"
    if "input_mask_max_area" not in params or "input_mask_share" not in params:
        return (f"without the {100 * mask_area:.0f} % of cells where they differ most from the "
                f"rest's")
    top = max(mask_area, float(params["input_mask_max_area"]))
    return (f"without the cells where they differ most from the rest's (the cells within "
            f"{100 * float(params['input_mask_share']):.0f} % of the largest difference, "
            f"{100 * mask_area:.0f}–{100 * top:.0f} % of the grid)")


def _regions_counted(cl: dict, params: dict) -> bool:
    """Whether the colocation counted the input regions its hot spot touches
    (:func:`spray.verdict.evidence.colocation_of`: only for a group at least as random as the
    knee without its footprint)."""
    knee = params.get("input_randomness_knee")
    return (float(params.get("colocation_region_share") or 0) > 0 and knee is not None
            and cl.get("input_randomness") is not None
            and float(cl["input_randomness"]) >= float(knee))


def _rate_note(entry: dict) -> str:
    """How unusual the score is among the evaluation's clean class checks (docs/verdict.md,
    "Calibration"); nothing where the reference does not apply to the run's flags."""
    rate = entry.get("clean_rate")
    return "" if rate is None else f" {_esc(rate_text(rate)).capitalize()}."


def _below_note(entry: dict) -> str:
    """Why a class is flagged with a score below the threshold (``transplant_reach``)."""
    below = [cl for cl in entry.get("clusters", [])
             if cl.get("followed_below") and cl.get("suspect")]
    if not entry.get("flagged") or not below:
        return ""
    cl = below[0]
    if cl.get("detail"):
        return (f" Flagged below the threshold: cluster {_esc(cl['id'])} (score "
                f"{_fmt(cl.get('score'), 2)}) holds the samples whose fine detail (each pixel "
                f"less its neighbourhood's mean) carries the pattern a group of samples recurring "
                f"in it share, where the model looks, and the model follows their pieces at "
                f"their place (the transplant test above; <code>recurring_detail</code>).")
    if cl.get("recurring"):
        return (f" Flagged below the threshold: cluster {_esc(cl['id'])} (score "
                f"{_fmt(cl.get('score'), 2)}) holds the samples that carry, anywhere in the "
                f"image, what a group of samples whose patterns where the model looks recur in "
                f"each other agree on, and the model follows those pieces where they are (the "
                f"transplant test above; <code>recurring_candidates</code>).")
    if cl.get("carried"):
        return (f" Flagged below the threshold: cluster {_esc(cl['id'])} (score "
                f"{_fmt(cl.get('score'), 2)}) holds the samples that carry, anywhere in the "
                f"image, what a window cut's members agree on where the model looks, and the "
                f"model follows those pieces where it looks at them (the transplant test above;"
                f" <code>carried_candidates</code>).")
    return (f" Flagged below the threshold: cluster {_esc(cl['id'])} scores "
            f"{_fmt(cl.get('score'), 2)}, within the transplant test's reach of the threshold, "
            f"and the model follows its pieces, which are alike at their place (the transplant "
            f"test above).")


def _gate_note(entry: dict) -> str:
    """The score the gate acts on, where the transplant test moved it off the class score
    (``gate_score``: the threshold plus the test's margin for a suspect the model follows)."""
    gate = entry.get("gate_score")
    held = [cl for cl in entry.get("clusters", [])
            if cl.get("suspect") and cl.get("followed_margin") is not None]
    if gate is None or entry.get("score") is None or not held or gate <= float(entry["score"]):
        return ""
    return (f" Gate score {_fmt(gate, 2)}: the threshold plus "
            f"{_fmt(max(cl['followed_margin'] for cl in held), 2)}, the errors by which the "
            f"transplant test's effect lies past its bar for the suspect the model follows "
            f"(how far the flag lies from falling).")


def _watch_note(entry: dict) -> str:
    if entry.get("flagged") or not entry.get("watch"):
        return ""
    if entry.get("not_followed"):
        ids = ", ".join(str(i) for i in entry["not_followed"])
        return (f" Watch: cluster {ids} was a suspect, but pasted onto other "
                f"classes' images its pieces turn the model to this class hardly more than the "
                f"rest's do (transplant test): the model is shown to ignore it (never "
                f"failing).")
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
               "watch — not followed by the model" if watch and entry.get("not_followed") else
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
        f"{_splits_note(entry)}.{_below_note(entry)}{_gate_note(entry)}{_watch_note(entry)}"
        f"{_rate_note(entry)}"
        f"</p>{warn}"
        f"{_health_note(entry)}"
        f"<h2>Evidence</h2>{_evidence(entry)}{suspect_html}"
        f"<h2>Spectrum</h2>{spectrum_svg(entry['eigenvalues'], entry['n_clusters'])}"
        f"<p class=note>first eigengaps λ<sub>i+1</sub> − λ<sub>i</sub>: {gaps}</p>"
        f"<h2>Clusters</h2><div class=scroll><table><tr><th>cluster</th><th>size</th>"
        f"<th>fraction</th><th>φ relevance</th><th>φ input</th><th>contrast</th>"
        f"<th>stable contrast</th><th>size penalty</th><th>input randomness</th>"
        f"<th>randomness penalty</th><th>colocation</th><th>colocation penalty</th>"
        f"<th>concentration</th><th>peak cell</th><th>score</th></tr>"
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
