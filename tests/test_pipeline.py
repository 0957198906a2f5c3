"""End to end: a config → Zarr store, summary.json, report, verdict; resume, lock, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from conftest import run_cli

from spray.config.run_config import load_config
from spray.errors import StoreError
from spray.run.execute import run
from spray.store import RunLock


@pytest.fixture(scope="module")
def small_run(small_problem, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "small"
    cfg, base = load_config(small_problem["config"])
    info = run(cfg, base, output=str(out), quiet=True)
    return out, info


def test_store_layout_and_summary(small_problem, small_run):
    out, info = small_run
    group = zarr.open_group(str(out / "spray.zarr"), mode="r")
    assert group.attrs["format"] == "spray-store"
    assert set(group.attrs["fingerprints"]) == {"model", "data", "attribution", "spray", "samples",
                                                "model_code", "dataset", "classes", "pipeline"}
    y = small_problem["y"]
    for c in range(3):
        cg = group["classes"][str(c)]
        n = int((y == c).sum())
        assert cg["relevance"].shape == (n, 32, 32)
        assert np.array_equal(cg["index"][:], np.flatnonzero(y == c))
        assert cg["eigenvalues"].shape[0] >= 2
        assert np.all(np.diff(cg["eigenvalues"][:]) >= -1e-9)
        assert cg["labels"].shape == (n,) and cg["tsne"].shape == (n, 2)
        assert np.isfinite(cg["relevance"][:]).all()
    summary = json.loads((out / "report" / "summary.json").read_text())
    for entry in summary["classes"]:
        for key in ("class", "name", "n_samples", "eigenvalues", "eigengaps", "n_clusters",
                    "score", "flagged", "clusters"):
            assert key in entry
        assert sum(cl["size"] for cl in entry["clusters"]) == entry["n_samples"]
    assert (out / "report" / "index.html").is_file()
    assert (out / "config.yaml").is_file()
    assert info["chunks_computed"] == info["chunks_total"] and info["chunks_reused"] == 0


def test_relevance_in_store_matches_lrp(small_problem, small_run):
    """The maps a Dask task wrote are the maps spray.lrp gives for the same samples."""
    from spray import lrp
    from spray.data.models import build_model

    out, _ = small_run
    cfg, base = load_config(small_problem["config"])
    model = build_model(cfg.model.model_dump(), str(base))
    cg = zarr.open_group(str(out / "spray.zarr" / "classes" / "1"), mode="r")
    idx = cg["index"][:10]
    x = torch.as_tensor(small_problem["x"][idx])
    expected = lrp.attribute(model, x, torch.full((10,), 1)).sum(1).numpy()
    np.testing.assert_allclose(cg["relevance"][:10], expected, rtol=1e-4, atol=1e-6)


def test_planted_stamp_is_flagged(small_problem, small_run):
    out, _ = small_run
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["flagged"] == [2], [(e["name"], e["score"]) for e in summary["classes"]]
    entry = summary["classes"][2]
    suspect = next(cl for cl in entry["clusters"] if cl["suspect"])
    members = set(suspect["members"])
    truth = set(int(i) for i in small_problem["poisoned"])
    precision = len(members & truth) / len(members)
    recall = len(members & truth) / len(truth)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)


def test_suspect_members_by_pattern_read_the_stored_inputs(small_problem, small_run):
    """The run gives the verdict the class's raw inputs (read chunk by chunk from the data
    source): the suspect records how many joined it by their pattern, and position i of the
    class reads the class's i-th dataset sample."""
    out, _ = small_run
    cg = zarr.open_group(str(out / "spray.zarr" / "classes" / "2"), mode="r")
    flags = cg.attrs["analysis"]["flags"]
    suspect = next(c for c in flags["clusters"] if c["id"] == flags["suspect_cluster"])
    assert isinstance(suspect.get("pattern_joined"), int), suspect
    assert isinstance(suspect.get("peak_joined"), int), suspect
    assert suspect["size"] == int((cg["labels"][:] == suspect["id"]).sum())

    from spray.data.sources import open_source
    from spray.run.tasks import class_patterns

    cfg, base = load_config(small_problem["config"])
    index = cg["index"][:]
    patterns = class_patterns(open_source(cfg.data.model_dump(), str(base)), index,
                              {"channel_sum": True, "pool": [20, 20]}, 64, cg["relevance"])
    stored = cg["relevance"][:]
    for rows in (np.array([0, 5, len(index) - 1]), np.arange(3, 9)):   # scattered, consecutive
        np.testing.assert_array_equal(patterns.load(rows), small_problem["x"][index[rows]])
        np.testing.assert_array_equal(patterns.relevance(rows), stored[rows])


def test_check_exit_codes_and_ci_files(small_run, tmp_path):
    out, _ = small_run
    proc = run_cli("check", out, "--junit", tmp_path / "j.xml", "--markdown", tmp_path / "s.md")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FLAGGED" in proc.stdout
    assert "<failure" in (tmp_path / "j.xml").read_text()
    assert "flagged" in (tmp_path / "s.md").read_text()


def test_rerun_reuses_all_chunks(small_problem, small_run):
    out, first = small_run
    cfg, base = load_config(small_problem["config"])
    again = run(cfg, base, output=str(out), quiet=True)
    assert again["chunks_computed"] == 0 and again["chunks_reused"] == first["chunks_total"]
    a = json.loads((out / "report" / "summary.json").read_text())
    assert [e["eigenvalues"] for e in a["classes"]] == [e["eigenvalues"] for e in a["classes"]]


def test_concurrent_run_is_refused(small_problem, small_run):
    out, _ = small_run
    with RunLock(out):
        proc = run_cli("run", small_problem["config"], "--output", out)
    assert proc.returncode == 2
    assert "in use by another spray run" in proc.stderr


def test_other_model_is_refused(small_problem, small_run, tmp_path):
    out, _ = small_run
    cfg, base = load_config(small_problem["config"])
    state = torch.load(small_problem["root"] / "weights.pt", weights_only=True)
    state = {k: v + 0.01 for k, v in state.items()}
    torch.save(state, tmp_path / "other.pt")
    cfg.model.weights = str(tmp_path / "other.pt")
    with pytest.raises(StoreError, match="different model"):
        run(cfg, base, output=str(out), quiet=True)
    assert (out / "spray.zarr" / "classes" / "1" / "relevance").exists()


def test_pickle_checkpoint_refused(small_problem, tmp_path):
    from spray.data.models import build_model
    from spray.errors import ModelError

    model = build_model({"factory": "smallnet:build", "weights": None}, str(small_problem["root"]))
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="trust_pickle"):
        build_model({"factory": "smallnet:build", "weights": str(tmp_path / "whole.pt")},
                    str(small_problem["root"]))
