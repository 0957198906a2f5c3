"""`spray demo` on a real LocalCluster (worker processes): planted class flagged, nothing else."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli


@pytest.mark.slow
@pytest.mark.distributed
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--output", out, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # progress in a log (stderr is no terminal here): plain lines per stage, no bar drawing
    log = proc.stderr
    assert "training the demo CNN 12/12 epochs" in log and "train accuracy" in log, log
    assert "LRP " in log and " maps/s" in log and "analyses 10/10 classes" in log, log
    assert "report " in log and "\r" not in log and "\x1b" not in log, log
    assert "still alive" not in log and "CancelledError" not in log, log
    truth = json.loads((out / "demo" / "ground_truth.json").read_text())
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["flagged"] == [truth["planted_class"]], [
        (e["name"], e["score"]) for e in summary["classes"]]
    entry = next(e for e in summary["classes"] if e["class"] == truth["planted_class"])
    suspect = next(cl for cl in entry["clusters"] if cl["suspect"])
    members, planted = set(suspect["members"]), set(truth["poisoned_indices"])
    precision = len(members & planted) / len(members)
    recall = len(members & planted) / len(planted)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["chunks_computed"] == run_info["chunks_total"] > 0
    html = (out / "report" / "index.html").read_text()
    assert "class_3.html" in html
    for e in summary["classes"]:
        assert (out / "report" / f"class_{e['class']}_tsne.html").stat().st_size > 1000
        assert (out / "report" / f"class_{e['class']}_clusters.png").stat().st_size > 100
    assert run_cli("check", out).returncode == 1


@pytest.mark.parametrize("content", ["notes.txt", "another-run"])
def test_demo_refuses_a_used_folder_before_training(tmp_path, content):
    """A folder holding files the demo did not write is refused at once: nothing trained,
    nothing written (no ``demo/`` left behind)."""
    out = tmp_path / "out"
    out.mkdir()
    if content == "notes.txt":
        (out / "notes.txt").write_text("mine")
    else:  # the output of a run that is not a demo
        (out / "spray.zarr").mkdir()
        (out / "spray.zarr" / "zarr.json").write_text("{}")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = run_cli("demo", "--output", out, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Nothing was written" in proc.stderr and "training" not in proc.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.distributed
def test_demo_vit_flags_the_planted_class_only(tmp_path):
    """``spray demo --model vit``: a small VisionTransformer explained with attn-lrp; the model
    relies on the stamp, the planted class alone is flagged, its suspect cluster is the stamped
    samples, health is recorded."""
    out = tmp_path / "demo"
    proc = run_cli("demo", "--model", "vit", "--output", out, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "training the demo ViT 15/15 epochs" in proc.stderr, proc.stderr
    truth = json.loads((out / "demo" / "ground_truth.json").read_text())
    config = (out / "demo" / "config.yaml").read_text()
    assert truth["model"] == "vit" and "composite: attn-lrp" in config and "build_vit" in config
    # a Clever-Hans model: the stamp turns other digits into the planted class
    assert truth["stamp_flip_rate"] >= 0.3 and truth["stamp_logit_gain"] > 0, truth
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["flagged"] == [truth["planted_class"]], [
        (e["name"], e["score"]) for e in summary["classes"]]
    entry = next(e for e in summary["classes"] if e["class"] == truth["planted_class"])
    members = {m for cl in entry["clusters"] if cl["suspect"] for m in cl["members"]}
    planted = set(truth["poisoned_indices"])
    precision = len(members & planted) / len(members)
    recall = len(members & planted) / len(planted)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    for e in summary["classes"]:
        assert e["health"]["samples"] == e["n_samples"] and e["health"]["unrecorded"] == 0
    assert run_cli("check", out, "--fail-on", "health").returncode == 1  # flagged, health ok
