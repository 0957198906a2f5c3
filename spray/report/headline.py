"""The plain-language headline of a flagged or watched class, computed from its evidence.

"28 of 92 images of digit 3 get their relevance from a 5×5 patch at the top left; without that
patch their inputs look like the rest of the class." The patch is the connected region around
the strongest difference between the cluster's mean relevance and the rest of the class; the
last clause follows the input randomness of the score (about 1: the inputs form no group of
their own once the patch is masked; well below 1: they are a sub-group of the data).
"""

from __future__ import annotations

import numpy as np

from spray.verdict.patterns import hot_region_cells

#: below this concentration the relevance difference is called spread out, not a patch
MIN_CONCENTRATION = 0.3
#: input randomness at or above this: the inputs look like the rest of the class
GROUP_RANDOMNESS = 0.7


def patch_extent(diff: np.ndarray) -> tuple[int, int, str] | None:
    """Height, width and position words of the region where ``diff`` (cluster − rest mean
    relevance, ``(H, W)``) is largest; ``None`` when the cluster has no positive difference."""
    d = np.asarray(diff, dtype=np.float64)
    found = hot_region_cells(d)
    if found is None:
        return None
    rows, cols = found
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    cy = (rows.min() + rows.max() + 1) / 2 / d.shape[0]
    cx = (cols.min() + cols.max() + 1) / 2 / d.shape[1]
    vertical = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "middle")
    horizontal = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "centre")
    if vertical == "middle":
        where = horizontal
    elif horizontal == "centre":
        where = vertical
    else:
        where = f"{vertical} {horizontal}"
    return h, w, where


def _decision(cluster: dict) -> str | None:
    """The transplant test's decision of a cluster entry (verdicts stored by earlier
    development versions carry ``followed``: True or False)."""
    if "decision" in cluster:
        return cluster["decision"]
    return {True: "followed", False: "ignored"}.get(cluster.get("followed"))


def transplant_sentence(cluster: dict) -> str:
    """What the transplant test found for a suspect (its strongest region), or ``""``."""
    tests = cluster.get("transplant") or []
    if not tests:
        return ""
    t = max(tests, key=lambda r: r["z"])
    where = "where their relevance differs" if t["region"] == "place" else "at their relevance peaks"
    verdict = {"followed": "the model follows them",
               "ignored": "the model is shown to ignore them",
               "undecided": "too close to the bar to tell, so they stay suspect"}.get(
        _decision(cluster), "untested")
    return (f" Pasted onto images of other classes, their pixels {where} turn "
            f"{100 * t['members']:.0f} % of them to this class (the rest's {100 * t['rest']:.0f} "
            f"%): {verdict}.")


def headline(entry: dict, cluster: dict, diff: np.ndarray | None, name: str) -> str:
    """One to three sentences saying what the suspect (or best candidate) of a class does (and,
    with the transplant test, whether the model follows it)."""
    return _relevance_sentence(entry, cluster, diff, name) + transplant_sentence(cluster)


def _relevance_sentence(entry: dict, cluster: dict, diff: np.ndarray | None, name: str) -> str:
    n, size = entry.get("n_samples"), cluster.get("size")
    who = f"{size} of {n} images of {name}"
    extent = patch_extent(diff) if diff is not None else None
    conc = cluster.get("concentration")
    patch = extent is not None and (conc is None or float(conc) >= MIN_CONCENTRATION)
    if patch:
        h, w, where = extent
        text = f"{who} get their relevance from a {h}×{w} patch at the {where}"
    else:
        text = (f"{who} get their relevance from other places than the rest of the class, "
                f"spread over the image rather than in one patch")
    masked = float((entry.get("flag_params") or {}).get("input_mask_area", 0.0)) > 0
    randomness = cluster.get("input_randomness")
    if randomness is None:
        return text + "."
    if float(randomness) >= GROUP_RANDOMNESS:
        lead = "without that patch their inputs" if patch and masked else "their inputs"
        return f"{text}; {lead} look like the rest of the class."
    return (f"{text}; their inputs also differ from the rest of the class as a group (input "
            f"randomness {float(randomness):.2f}), so they may be a genuine sub-type of the "
            f"class rather than an artefact.")
