"""A class's suspects and the one-line reason a flag is raised, as ``spray check`` states them."""

from __future__ import annotations

import math
import re

from spray.verdict.calibration import rate_text

#: baseline outcomes that fail the check
FAILING = ("new", "worse")
#: class statuses the gate accepts without ``allow_incomplete``
VOUCHED = ("ok", "skipped")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")


def _plain(text) -> str:
    """Text without control characters (valid in XML, one line in a log)."""
    return _CONTROL.sub("?", str(text)).replace("\n", " ").replace("\r", " ").replace("\t", " ")


def _num(v) -> str:
    return "—" if v is None else f"{float(v):.2f}"


def _suspects(entry: dict) -> list[dict]:
    """The suspect clusters of a class, the best (``suspect_cluster``) first."""
    found = [cl for cl in entry.get("clusters", []) if cl.get("suspect")]
    return sorted(found, key=lambda cl: cl.get("id") != entry.get("suspect_cluster"))


def _suspect(entry: dict) -> dict | None:
    found = _suspects(entry)
    return found[0] if found else None


def _suspect_size(entry: dict):
    """Samples in all suspect clusters of the class (None without a suspect)."""
    found = _suspects(entry)
    return sum(cl.get("size") or 0 for cl in found) if found else None


def _suspect_members(entry: dict) -> list | None:
    found = [cl["members"] for cl in _suspects(entry) if cl.get("members") is not None]
    return [m for members in found for m in members] if found else None


def _separated_by(cl: dict) -> tuple[str, str, str, str]:
    """What separates a suspect, in the CI reason's words: what groups its samples, the graph a
    sweep cut was cut from (" of …", empty for the relevance graph), the conductance's key and
    its name."""
    if cl.get("cut_graph") == "edges":          # an edge cut: separated by its inputs' edges
        return ("inputs' edges group them where the model looks, although the rest of their "
                "inputs do not", " of the edge graph", "conductance_edges", "edges")
    if cl.get("cut_graph") == "windows":        # a window cut: by what lies under their peaks
        return ("inputs where the model looks hardest (wherever that is) group them, although "
                "the rest of their inputs do not", " of the peak windows' graph",
                "conductance_windows", "peak windows")
    return ("relevance groups them although their inputs do not", "",
            "conductance_relevance", "relevance")


def _followed(cl: dict) -> str:
    """The transplant test's strongest region of a suspect, in a few words."""
    tests = cl.get("transplant") or []
    if not tests:
        return "transplant test"
    t = max(tests, key=lambda r: r["z"])
    return (f"transplant test: its pieces turn {100 * t['members']:.0f} % of other classes' "
            f"images to the class, the rest's {100 * t['rest']:.0f} %, z {t['z']:.1f}")


def _reason(entry: dict) -> str:
    cl = _suspect(entry) or {}
    size = cl.get("size")
    whose, graph, key, name = _separated_by(cl)
    against = (f"(its suspect {_num(cl.get('score'))}) below threshold "
               f"{entry.get('threshold')}, flagged as the model follows the suspect "
               f"({_followed(cl)})" if cl.get("followed_below")
               else f"≥ threshold {entry.get('threshold')}")
    bits = [f"class {_plain(entry['name'])} ({entry['class']}): score {entry['score']:.2f} "
            f"{against}; suspect cluster {cl.get('id')} of {size} samples "
            f"({100 * float(cl.get('fraction', 0)):.0f} %) whose {whose}"]
    ev = []
    if key in cl:
        ev.append(f"conductance {name} {cl[key]:.3g} vs input "
                  f"{cl.get('conductance_input', float('nan')):.3g}")
    if cl.get("input_randomness") is not None:
        ev.append(f"input conductance {cl['input_randomness']:.2f} x random")
    if cl.get("colocation") is not None:
        ev.append(f"colocation {cl['colocation']:.2f}")
    if cl.get("hot_spot_separation") is not None:
        ev.append(f"hot-spot separation {cl['hot_spot_separation']:.2f}")
    if cl.get("hot_spot_mass") is not None:
        ev.append(f"hot-spot mass {cl['hot_spot_mass']:.3f}")
    if cl.get("window_mass") is not None:
        ev.append(f"window mass {cl['window_mass']:.3f}")
    if cl.get("concentration") is not None:
        ev.append(f"{100 * cl['concentration']:.0f} % of its relevance difference in "
                  f"{100 * float((entry.get('flag_params') or {}).get('concentration_area', 0.1)):.0f}"
                  f" % of the area")
    if cl.get("split_from") is not None:
        how = (f"a sweep cut along eigenvector {cl['cut_along']}{graph}"
               if cl.get("cut_along") is not None else "its spectral bisection")
        ev.append(f"split off cluster {cl['split_from']} by {how}")
    if entry.get("scored_on") is not None:
        ev.append(f"measured on a subsample of {entry['scored_on']} samples")
    if entry.get("clean_rate") is not None:
        ev.append(rate_text(entry["clean_rate"]))
    if ev:
        bits.append("(" + "; ".join(ev) + ")")
    more = _suspects(entry)[1:]
    if more:
        bits.append("; also suspect: " + ", ".join(
            f"cluster {m.get('id')} ({m.get('size')} samples, score {_num(m.get('score'))})"
            for m in more))
    if entry.get("baseline"):
        bits.append(f"[baseline: {entry['baseline']}"
                    + (f" — {entry['baseline_reason']}" if entry.get("baseline_reason") else "")
                    + "]")
    return " ".join(bits)


def failing(summary: dict) -> list[dict]:
    """Entries that fail the check: flagged (and, with a baseline, new or worse)."""
    with_baseline = "baseline_counts" in summary
    return [e for e in summary["classes"] if e.get("flagged")
            and (not with_baseline or e.get("baseline") in FAILING)]
