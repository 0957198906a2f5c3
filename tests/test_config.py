"""Config validation: unknown keys and wrong types name the key; the CLI exits 2."""

from __future__ import annotations

import copy
import logging
import os

import pytest
from conftest import run_cli, write_config

from spray.config.run_config import load_config
from spray.errors import ConfigError


def test_valid_config_resolves_paths_against_its_folder(small_problem):
    cfg, base = load_config(small_problem["config"])
    assert base == small_problem["root"].resolve()
    assert cfg.data.path == str(small_problem["root"].resolve() / "data.npz")
    assert cfg.output == str(small_problem["root"].resolve() / "runs" / "small")


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["attribution"].update(compsite="x"), "attribution.compsite"),
    (lambda c: c.update(colour="red"), "colour"),
    (lambda c: c["attribution"].update(batch_size="many"), "attribution.batch_size"),
    (lambda c: c["attribution"].update(chunk_size=0), "attribution.chunk_size"),
    (lambda c: c.update(classes=[]), "classes"),
    (lambda c: c["cluster"].update(scheduler="udp://x"), "cluster.scheduler"),
    (lambda c: c["model"].update(factory="nocolon"), "model.factory"),
    (lambda c: c["data"].update(path="missing.npz"), "data.path"),
])
def test_bad_config_names_the_key(small_problem, tmp_path, mutate, key):
    config = copy.deepcopy(small_problem["raw_config"])
    config["data"]["path"] = str(small_problem["root"] / "data.npz") if key != "data.path" else "missing.npz"
    config["model"]["weights"] = str(small_problem["root"] / "weights.pt")
    mutate(config)
    path = write_config(tmp_path, "bad.yaml", config)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"'{key}'" in str(err.value)


def test_cli_bad_key_exit_code_2(small_problem, tmp_path):
    config = copy.deepcopy(small_problem["raw_config"])
    config["data"]["path"] = str(small_problem["root"] / "data.npz")
    config["model"]["weights"] = str(small_problem["root"] / "weights.pt")
    config["attribution"]["epsilonn"] = 0.1
    proc = run_cli("run", write_config(tmp_path, "bad.yaml", config))
    assert proc.returncode == 2, proc.stderr
    assert "attribution.epsilonn" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_class_out_of_range_exit_2(small_problem, tmp_path):
    config = copy.deepcopy(small_problem["raw_config"])
    config.update(classes=[0, 7], class_names=None)
    config["data"]["path"] = str(small_problem["root"] / "data.npz")
    config["model"]["weights"] = str(small_problem["root"] / "weights.pt")
    config["model"]["factory"] = "smallnet:build"
    (tmp_path / "smallnet.py").write_text((small_problem["root"] / "smallnet.py").read_text())
    proc = run_cli("run", write_config(tmp_path, "bad.yaml", config), "--output", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "classes" in proc.stderr and "7" in proc.stderr


def test_the_config_reference_in_the_docs_is_generated_from_the_code():
    """docs/config.md's tables come from the pydantic models; regenerate them with
    ``python -m spray.config.reference docs/config.md`` after changing a config model."""
    from pathlib import Path

    from spray.config.reference import render

    path = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    assert path.read_text() == render(path), "docs/config.md is out of date"
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("cluster, workers", [
    ({"scheduler": "local"}, max(1, len(os.sched_getaffinity(0)) // 4)),
    ({"scheduler": "threads"}, max(1, len(os.sched_getaffinity(0)) // 4)),
    ({"scheduler": "slurm", "slurm": {"processes": 3}}, 3),
    ({"scheduler": "local", "n_workers": 5}, 5),
])
def test_cluster_workers_auto_follow_the_machine(small_problem, tmp_path, cluster, workers):
    config = copy.deepcopy(small_problem["raw_config"])
    config["data"]["path"] = str(small_problem["root"] / "data.npz")
    config["model"]["weights"] = str(small_problem["root"] / "weights.pt")
    config["cluster"] = cluster
    records = _Records()
    logger = logging.getLogger("spray.config.cluster")
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        cfg, _ = load_config(write_config(tmp_path, "auto.yaml", config))
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    assert cfg.cluster.n_workers == workers
    assert cfg.cluster.threads_per_worker == 1
    said = " ".join(records.messages)
    assert "threads_per_worker 1" in said  # the choice is stated in the run's log
    assert ("n_workers" in said) == ("n_workers" not in cluster)
    if cluster["scheduler"] == "local" and "n_workers" not in cluster:
        assert f"{len(os.sched_getaffinity(0))} cores" in said


def test_unknown_keys_get_a_did_you_mean_hint(tmp_path):
    from spray.config.presets import load_pipeline
    from spray.config.run_config import validate_config

    with pytest.raises(ConfigError, match=r"'attribution.chunk_sise' \(did you mean 'chunk_size'\?\)"):
        validate_config({"data": {"source": "digits"}, "model": {"factory": "m:f"},
                         "attribution": {"chunk_sise": 5}}, tmp_path)
    with pytest.raises(ConfigError, match=r"'flags.threshhold': unknown key \(did you mean "
                                          r"'threshold'\?\)"):
        load_pipeline("spray-default", {"flags": {"threshhold": 3}})
    with pytest.raises(ConfigError) as err:  # nothing close: no guess
        load_pipeline("spray-default", {"affinity": {"zzzzzz": 1}})
    assert "did you mean" not in str(err.value)
