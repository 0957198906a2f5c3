"""The run summary (``report/summary.json``), built only from what is in the store.

One entry per class (schema in docs/outputs.md) plus the flagged list. This module needs no
plotting library, so ``spray check`` can rebuild a summary without drawing anything.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from spray.config.presets import FlagsSection
from spray.errors import SprayError
from spray.store import class_samples_hash, damaged_class, open_store, read_health, store_path

#: dataset indices listed per suspicious cluster at most
MAX_MEMBERS = 100_000
#: score margin below the threshold of the "watch" band when a stored analysis does not say
#: (its default is defined once, in the preset schema)
WATCH_MARGIN = FlagsSection.model_fields["watch_margin"].default


def health_entry(cg, limits: dict | None) -> dict | None:
    """Relevance health of a class (:func:`spray.lrp.summarize_health` over its samples) with
    the count of samples whose conservation lies outside the preset's ``health`` limits
    (``outside``) and of samples without figures (``unrecorded``); None for a class stored
    without health figures."""
    from spray.lrp.health import summarize_health

    health = read_health(cg)
    if health is None:
        return None
    recorded = health.pop("recorded")
    health = {k: v[recorded] for k, v in health.items()}
    entry = summarize_health(health)["all"]
    entry["unrecorded"] = int((~recorded).sum())
    if limits:
        ratio = health["conservation"]
        with np.errstate(invalid="ignore"):
            inside = (ratio >= limits["conservation_min"]) & (ratio <= limits["conservation_max"])
        entry.update({"outside": int((~inside).sum()), "limits": dict(limits)})
    return entry


def _class_entry(cg, c: int, limits: dict | None = None) -> dict:
    attrs = dict(cg.attrs)
    analysis = attrs.get("analysis")
    entry = {"class": int(c), "name": attrs.get("name", str(c)),
             "n_samples": int(attrs.get("n_samples", 0)), "health": health_entry(cg, limits)}
    stale = analysis is not None and analysis.get("samples_hash") not in (None,
                                                                          class_samples_hash(cg))
    if analysis is None or stale:  # no analysis, or one of maps recomputed since
        entry.update({"status": "incomplete", "eigenvalues": [], "eigengaps": [],
                      "n_clusters": 0, "score": None, "flagged": False, "clusters": []})
        return entry
    flags = analysis["flags"]
    labels = cg["labels"][:]
    index = cg["index"][:]
    suspects = flags.get("suspect_clusters")
    if suspects is None:   # stores written before several suspects were reported
        suspects = [] if flags.get("suspect_cluster") is None else [flags["suspect_cluster"]]
    not_followed = flags.get("not_followed")
    suspicious = (set(suspects) | ({flags.get("candidate_cluster")} - {None})
                  | set(not_followed or []))
    clusters = []
    for cl in flags["clusters"]:
        item = dict(cl)
        if cl["id"] in suspicious:
            item["members"] = [int(i) for i in index[labels == cl["id"]][:MAX_MEMBERS]]
        item["suspect"] = cl["id"] in suspects
        item["candidate"] = cl["id"] == flags.get("candidate_cluster")
        clusters.append(item)
    entry.update({
        "status": "ok", "eigenvalues": [float(v) for v in cg["eigenvalues"][:]],
        "eigengaps": [float(v) for v in cg["eigengaps"][:]],
        "n_clusters": int(analysis["n_clusters"]), "k": int(analysis["k"]),
        "rule": flags.get("rule"),
        "score": float(flags["score"]), "threshold": float(flags["threshold"]),
        "flagged": bool(flags["flagged"]), "suspect_cluster": flags.get("suspect_cluster"),
        "suspect_clusters": suspects,
        "candidate_cluster": flags.get("candidate_cluster"),
        "splits": flags.get("splits", []),
        "clusters": clusters, "warnings": analysis.get("warnings", []),
        "accuracy": _accuracy(cg["prediction"][:], c),
    })
    if flags.get("params"):
        entry["flag_params"] = dict(flags["params"])
    if flags.get("scored_on") is not None:
        entry["scored_on"] = int(flags["scored_on"])
    if flags.get("clean_rate") is not None:
        entry["clean_rate"] = dict(flags["clean_rate"])
    if not_followed is not None:   # the transplant test ran (flags.transplant_pairs)
        entry["not_followed"] = list(not_followed)
    if flags.get("gate_score") is not None:
        entry["gate_score"] = float(flags["gate_score"])
    return entry


def _accuracy(prediction: np.ndarray, label: int):
    """Share of the class predicted as the class, over the samples with a known prediction
    (attribution files without predictions store −1); ``None`` when none is known."""
    known = prediction >= 0
    return float(np.mean(prediction[known] == label)) if known.any() else None


def _read_class_entry(run_dir: Path, classes, key: str, limits: dict | None = None) -> dict:
    """The summary entry of one class; unreadable arrays are a clear store error."""
    try:
        return _class_entry(classes[key], int(key), limits)
    except SprayError:
        raise
    except Exception as err:  # noqa: BLE001 - codec/IO errors of a damaged store
        raise damaged_class(run_dir, key, err) from None


def read_class_entries(run_dir: str | Path, keys: list[str]) -> list[dict]:
    """The summary entries of the classes ``keys``, read from their arrays (any process)."""
    group = open_store(run_dir)
    classes = group["classes"]
    return [_read_class_entry(Path(run_dir), classes, key) for key in keys]


def class_fingerprints(run_dir: str | Path) -> dict[str, str]:
    """A hash of every class group's attributes (name, sizes, the analysis and its verdict),
    read straight from the Zarr v3 metadata files, and of the size and modification time of
    every file of the class: one ``stat`` per file, no array is read.

    The analysis arrays of a class are written before its attributes, so an unchanged hash
    means an unchanged summary entry (:func:`build_summary` reuses it). A chunk file that was
    truncated, replaced or removed changes the hash, so the class is read again and a damaged
    array is reported instead of hidden behind the entry of an earlier report.
    """
    root = store_path(run_dir) / "classes"
    out = {}
    if not root.is_dir():
        return out
    with os.scandir(root) as entries:
        for item in entries:
            if not item.name.isdigit():
                continue
            try:
                with open(os.path.join(item.path, "zarr.json"), "rb") as fh:
                    h = hashlib.sha256(fh.read())
            except OSError:
                continue  # not a group (yet)
            h.update(_files_stamp(item.path).encode())
            out[item.name] = h.hexdigest()[:20]
    return out


def _files_stamp(folder: str) -> str:
    """Relative path, size and modification time of every file below ``folder``."""
    stamps = []
    for top, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(top, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            stamps.append(f"{os.path.relpath(path, folder)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(sorted(stamps))


def build_summary(run_dir: Path, reuse: dict[str, dict] | None = None) -> dict:
    """summary.json content: one entry per class plus the flagged list.

    ``reuse`` maps class keys to entries known to be current (their class attributes are
    unchanged, see :func:`class_fingerprints`); only the other classes' arrays are read. The
    classes are listed from the store's folders, so a damaged one is named, not skipped.
    """
    group = open_store(run_dir)
    limits = group.attrs.get("health_limits")
    reuse = {k: e for k, e in (reuse or {}).items()  # health counted with the current limits
             if (e.get("health") or {}).get("limits") == limits}
    current = group.attrs.get("classes")  # the classes of the last run's config
    folder = store_path(run_dir) / "classes"  # listed from disk: a damaged member is named below
    stored = sorted((p.name for p in folder.iterdir() if p.name.isdigit()), key=int) \
        if folder.is_dir() else []
    keys = [k for k in stored if current is None or int(k) in current]
    classes = group["classes"] if "classes" in group and any(k not in reuse for k in keys) \
        else {}
    entries = [dict(reuse[key]) if key in reuse
               else _read_class_entry(run_dir, classes, key, limits) for key in keys]
    for c, why in dict(group.attrs.get("skipped", {})).items():
        entries.append({"class": int(c), "name": str(c), "n_samples": None, "status": "skipped",
                        "reason": why, "eigenvalues": [], "eigengaps": [], "n_clusters": 0,
                        "score": None, "flagged": False, "clusters": []})
    for entry in entries:
        reason = dict(group.attrs.get("failed", {})).get(str(entry["class"]))
        if reason:
            entry.update({"status": "failed", "reason": reason, "flagged": False})
            entry.pop("gate_score", None)       # no verdict to act on
    entries.sort(key=lambda e: e["class"])
    margin = mark_watch(entries)
    return {"run_state": group.attrs.get("run_state"), "run_id": group.attrs.get("run_id"),
            "watch_margin": margin, "watch": [e["class"] for e in entries if e.get("watch")],
            "health_limits": limits,
            "model_skill": _model_skill(group),
            "spray_version": group.attrs.get("spray_version"),
            "config_hash": group.attrs.get("config_hash"),
            "fingerprints": dict(group.attrs.get("fingerprints", {})),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "classes": entries,
            "flagged": [e["class"] for e in entries if e["flagged"]]}


def _model_skill(group) -> dict:
    """The run's record of the model's skill; computed from the stored predictions when the
    store was made before runs recorded it."""
    skill = group.attrs.get("model_skill")
    if isinstance(skill, dict):
        return dict(skill)
    from spray.skill import model_skill

    classes = group["classes"] if "classes" in group else {}  # noqa: SIM401 - a Zarr group
    return model_skill(classes, group.attrs.get("classes"))


def mark_watch(entries: list[dict]) -> float:
    """Mark the classes whose score lies within the watch margin below their threshold (near
    misses, listed but never failing); returns the margin."""
    margin = WATCH_MARGIN
    for e in entries:
        params = e.get("flag_params") or {}
        if isinstance(params.get("watch_margin"), (int, float)):
            margin = float(params["watch_margin"])
        e["watch"] = bool(e.get("status") == "ok" and not e.get("flagged")
                          and e.get("score") is not None and e.get("threshold") is not None
                          and e["score"] >= e["threshold"] - margin)
    return margin


def write_summary(run_dir: str | Path, reuse: dict[str, dict] | None = None) -> dict:
    """Build the summary from the store and write ``RUN_DIR/report/summary.json``; return it.

    ``reuse``: entries of unchanged classes (see :func:`build_summary`).
    """
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(run_dir, reuse)
    (out / "summary.json").write_text(dumps_summary(summary))
    return summary


def dumps_summary(summary: dict) -> str:
    """summary.json text: top-level keys one per line, each class entry on a line of its own
    (the C JSON encoder, ~10× faster than an indented dump at 1000 classes)."""
    lines = []
    for key, value in summary.items():
        if key == "classes":
            inner = ",\n    ".join(json.dumps(e) for e in value)
            lines.append(f'  "classes": [\n    {inner}\n  ]' if value else '  "classes": []')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"
