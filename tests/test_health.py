"""Relevance health through the whole pipeline: per sample in the store, per class in
summary.json and the report, and ``spray check --fail-on health`` against the preset's limits."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spray.cli.main import main
from spray.config.presets import load_pipeline
from spray.errors import ConfigError
from spray.run.tasks import explained_logits
from spray.store import open_class


def _project(small_problem, root: Path, classes) -> Path:
    """The small problem's files with a config for ``classes`` (classes 0 and 1 carry no
    planted stamp, so their run is not flagged)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("data.npz", "weights.pt", "smallnet.py"):
        shutil.copy(small_problem["root"] / name, root / name)
    cfg = copy.deepcopy(small_problem["raw_config"])
    cfg.update({"output": "out", "classes": classes})
    cfg["pipeline"]["embedding"] = {"method": "none"}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _set_health(root: Path, health: dict) -> None:
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["pipeline"]["health"] = health
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def healthy(small_problem, tmp_path_factory):
    """A finished run of the two unflagged classes of the small problem (a trained CNN,
    epsilon-plus-flat)."""
    root = _project(small_problem, tmp_path_factory.mktemp("health") / "project", [0, 1])
    assert main(["run", str(root / "config.yaml"), "--quiet"]) == 0
    return root


def test_health_is_stored_per_sample_and_summarized_per_class(healthy):
    """Every sample has its conservation ratio (Σ relevance / explained logit) in the store;
    summary.json holds the per-class figures and the limits, the class page shows them."""
    from spray import lrp
    from spray.data.models import load_model

    run_dir = healthy / "out"
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["health_limits"] == load_pipeline()["health"]
    data = np.load(healthy / "data.npz")
    model = load_model({"factory": "smallnet:build", "weights": str(healthy / "weights.pt")},
                       str(healthy))
    for e in summary["classes"]:
        h = e["health"]
        assert h["samples"] == e["n_samples"] and h["unrecorded"] == 0, h
        assert h["nonfinite_samples"] == 0 and h["zero_maps"] == 0 and h["outside"] == 0
        # epsilon-plus-flat on a small ReLU CNN: biases and epsilon absorb a little
        assert 0.5 < h["conservation_p05"] <= h["conservation_median"] \
            <= h["conservation_p95"] < 1.5, h
        cg = open_class(run_dir, e["class"])
        index = cg["index"][:]
        x = torch.as_tensor(data["x"][index])
        rel, logits = lrp.attribute(model, x, e["class"], return_logits=True)
        expected = rel.sum(dim=(1, 2, 3)) / logits[:, e["class"]]
        np.testing.assert_allclose(cg["conservation"][:], expected.detach().numpy(), rtol=1e-4)
        page = (run_dir / "report" / f"class_{e['class']}.html").read_text()
        assert "Relevance health" in page and "maps with NaN/Inf 0" in page


def test_check_fail_on_health_passes_a_healthy_run(healthy, capsys):
    code = main(["check", str(healthy / "out"), "--fail-on", "health"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "health:" not in out


def test_check_fail_on_health_fails_when_conservation_crosses_the_preset(healthy, tmp_path,
                                                                         capsys):
    """A preset whose conservation band lies above the run's real ratios: the rerun reuses
    the maps and analyses (the limits are no part of the analysis), and the gate fails with the
    limit, the count and the median, but only when asked to."""
    root = tmp_path / "project"
    shutil.copytree(healthy, root)
    summary = json.loads((root / "out" / "report" / "summary.json").read_text())
    top = max(e["health"]["conservation_max"] for e in summary["classes"])
    low = round(top + 0.01, 3)
    _set_health(root, {"conservation_min": low, "conservation_max": 10.0})
    assert main(["run", str(root / "config.yaml"), "--quiet"]) == 0
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["chunks_computed"] == 0, run
    capsys.readouterr()
    assert main(["check", str(root / "out")]) == 0  # off by default
    capsys.readouterr()
    code = main(["check", str(root / "out"), "--fail-on", "health"])
    out = capsys.readouterr().out
    assert code == 1, out
    for e in summary["classes"]:
        n = e["n_samples"]
        assert (f"health: class {e['name']} ({e['class']}): conservation (relevance sum / "
                f"explained logit) outside [{low:g}, 10] for {n} of {n} samples") in out


def test_run_check_fail_on_health_fails_on_a_run_without_health_figures(healthy, tmp_path,
                                                                        capsys):
    """Fail closed: maps stored without health figures (as by an older spray) fail the gate."""
    root = tmp_path / "project"
    shutil.copytree(healthy, root)
    cg = open_class(root / "out", 0, mode="a")
    cg["nonfinite"][:] = -1
    from spray.report.summary import write_summary

    write_summary(root / "out")
    capsys.readouterr()
    assert main(["check", str(root / "out"), "--fail-on", "health"]) == 1
    out = capsys.readouterr().out
    assert "class zero (0): relevance health not recorded" in out, out


def test_health_section_is_validated():
    assert load_pipeline(overrides={"health": {"max_outside": 0.5}})["health"]["max_outside"] \
        == 0.5
    with pytest.raises(ConfigError, match="pipeline key 'health.max_outside'"):
        load_pipeline(overrides={"health": {"max_outside": 2}})
    with pytest.raises(ConfigError, match="health.max_nan"):
        load_pipeline(overrides={"health": {"max_nan": 1}})


def test_explained_logits_follow_the_target():
    logits = np.array([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(explained_logits(logits, 2, {"target": "label"}), [2.0, -1.0])
    np.testing.assert_array_equal(explained_logits(logits, 2, {"target": "prediction"}),
                                  [3.0, 5.0])
    np.testing.assert_array_equal(explained_logits(logits, 2, {"target": 0}), [1.0, 5.0])
