"""The SLURM launch template: the configs' `cluster.slurm` settings give a valid dask-jobqueue job
script, and the driver batch script really runs `spray run` (here without SLURM)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from scale_support import reference_run, run_info, scale_config

from spray.config.run_config import RunConfig, validate_config
from spray.errors import ConfigError
from spray.run.dask_cluster import make_slurm_cluster, slurm_cluster_kwargs

TEMPLATES = sorted((REPO / "configs").glob("imagenet-*.yaml"))
SBATCH = REPO / "workflows" / "slurm-run.sbatch"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_builds_the_slurm_job_script(path, tmp_path):
    jobqueue = pytest.importorskip("dask_jobqueue")
    raw = yaml.safe_load(path.read_text())
    cfg = RunConfig.model_validate(raw)  # schema only: the dataset is not on this machine
    assert cfg.cluster.scheduler == "slurm"
    kwargs = slurm_cluster_kwargs(cfg.cluster.model_dump())
    kwargs["log_directory"] = str(tmp_path / "logs")
    with jobqueue.SLURMCluster(**kwargs) as cluster:
        script = cluster.job_script()
    s = cfg.cluster.slurm
    lines = script.splitlines()
    assert f"#SBATCH -p {s.queue}" in lines
    assert f"#SBATCH -t {s.walltime}" in lines
    assert f"#SBATCH --cpus-per-task={s.cores}" in lines
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    for directive in s.job_extra_directives:
        assert f"#SBATCH {directive}" in lines
    for line in s.job_script_prologue:
        assert line in lines
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert f"--nthreads {cfg.cluster.threads_per_worker}" in worker
    assert "--resources GPU=1" in worker  # LRP tasks go to GPU workers
    assert "--lifetime" in worker
    assert cfg.cluster.device == "cuda" and cfg.cluster.lrp_resources == {"GPU": 1}


def test_template_factories_exist():
    sys.path.insert(0, str(REPO / "configs"))
    try:
        import imagenet_models
    finally:
        sys.path.remove(str(REPO / "configs"))
    for path in TEMPLATES:
        factory = yaml.safe_load(path.read_text())["model"]["factory"]
        module, func = factory.split(":")
        assert module == "imagenet_models" and callable(getattr(imagenet_models, func))


def test_slurm_settings_are_validated(tmp_path):
    raw = {"data": {"source": "digits"}, "model": {"factory": "m:f"},
           "cluster": {"scheduler": "slurm", "slurm": {"walltime": "4 hours"}}}
    with pytest.raises(ConfigError, match="cluster.slurm.walltime"):
        validate_config(raw, tmp_path)
    raw["cluster"]["slurm"] = {"partition": "gpu"}
    with pytest.raises(ConfigError, match="unknown key 'cluster.slurm.partition'"):
        validate_config(raw, tmp_path)


def test_slurm_without_dask_jobqueue_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    cfg = validate_config({"data": {"source": "digits"}, "model": {"factory": "m:f"},
                           "cluster": {"scheduler": "slurm"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"spray\[slurm\]"):
        make_slurm_cluster(cfg.cluster.model_dump())


def test_sbatch_script_syntax():
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
    text = SBATCH.read_text()
    assert "#SBATCH --signal=B:TERM@" in text  # spray gets time to stop cleanly


@pytest.mark.slow
def test_sbatch_driver_runs_spray(small_problem, tmp_path, tmp_path_factory):
    """Run the batch script as SLURM would (bash), on this machine with the threads scheduler;
    the output is a finished run, so the driver resumes it and recomputes no chunk."""
    out = tmp_path / "run"
    shutil.copytree(reference_run(small_problem, tmp_path_factory.getbasetemp()), out)
    env = dict(os.environ, SPRAY_SCHEDULER="threads", SPRAY_OUTPUT=str(out),
               SPRAY=f"{sys.executable} -m spray")
    proc = subprocess.run(["bash", str(SBATCH), str(scale_config(small_problem))], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "spray driver: exit code 0" in proc.stdout
    info = run_info(out)
    assert info["chunks_computed"] == 0 and info["chunks_reused"] == info["chunks_total"]
    assert Path(out, "report", "summary.json").is_file()


def test_slurm_without_sbatch_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    cfg = validate_config({"data": {"source": "digits"}, "model": {"factory": "m:f"},
                           "cluster": {"scheduler": "slurm"}}, tmp_path)
    with pytest.raises(ConfigError, match="sbatch"):
        make_slurm_cluster(cfg.cluster.model_dump())
