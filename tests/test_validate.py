"""``spray validate``: a config checked end to end and a run described, nothing written."""

from __future__ import annotations

import copy

from conftest import run_cli, write_config


def test_validate_describes_the_run_and_writes_nothing(small_problem, tmp_path):
    config = copy.deepcopy(small_problem["raw_config"])
    config["data"]["path"] = str(small_problem["root"] / "data.npz")
    config["model"]["weights"] = str(small_problem["root"] / "weights.pt")
    config["model"]["factory"] = "smallnet:build"
    (tmp_path / "smallnet.py").write_text((small_problem["root"] / "smallnet.py").read_text())
    config["output"] = "runs/validated"
    path = write_config(tmp_path, "config.yaml", config)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = run_cli("validate", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    sizes = {c: int((small_problem["y"] == c).sum()) for c in range(3)}
    assert f"3 classes to analyse, {sum(sizes.values())} samples" in out
    for c, name in enumerate(["zero", "one", "two"]):
        assert f"class {c} ({name}): {sizes[c]} samples, {-(-sizes[c] // 64)} chunk(s)" in out
    assert "maps/s measured on one batch" in out and "MiB of relevance maps" in out
    assert "nothing was written" in out
    # nothing written: no run folder, no store, no bytecode of the factory beside the config
    assert sorted(p.name for p in tmp_path.rglob("*") if "__pycache__" not in p.parts) \
        == [n for n in before if n != "__pycache__"]


def test_validate_reports_a_config_error_like_run(small_problem, tmp_path):
    config = copy.deepcopy(small_problem["raw_config"])
    config["attribution"]["composite"] = "epsilon-plus-flatt"
    config["data"]["path"] = str(small_problem["root"] / "data.npz")
    config["model"]["weights"] = str(small_problem["root"] / "weights.pt")
    (tmp_path / "smallnet.py").write_text((small_problem["root"] / "smallnet.py").read_text())
    proc = run_cli("validate", write_config(tmp_path, "bad.yaml", config), cwd=tmp_path)
    assert proc.returncode == 2 and "attribution.composite" in proc.stderr
    assert "Traceback" not in proc.stderr
