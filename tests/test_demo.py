"""`spray demo` on a real LocalCluster (worker processes): planted class flagged, nothing else."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli


@pytest.mark.slow
@pytest.mark.distributed
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--output", out, "--quiet", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
        assert (out / "report" / f"class_{e['class']}_tsne.png").stat().st_size > 1000
    assert run_cli("check", out).returncode == 1
