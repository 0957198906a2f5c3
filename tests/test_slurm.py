"""SLURM: the configs' `cluster.slurm` settings give a valid dask-jobqueue job script, and spray
runs on a real single-node SLURM cluster (tests/slurm/start-cluster.sh, marker `slurm`) as users
launch it: worker jobs from `cluster.scheduler: slurm`, a cancelled worker job, worker jobs that
reach their walltime, the driver submitted with `sbatch workflows/slurm-run.sbatch` (cancelled
and resubmitted), and LRP tasks pinned to worker jobs started with a resource. Each run is
compared with an uninterrupted local run of the same config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from scale_support import (
    assert_same_results,
    chunks_done,
    free_port,
    reference_run,
    run_info,
    scale_config,
    spray_process,
    stop,
    summary,
    wait_until,
)

from spray.config.run_config import RunConfig, validate_config
from spray.errors import ConfigError
from spray.run.dask_cluster import make_slurm_cluster, slurm_cluster_kwargs

TEMPLATES = sorted((REPO / "configs").glob("imagenet-*.yaml"))
SBATCH = REPO / "workflows" / "slurm-run.sbatch"
START, STOP = REPO / "tests" / "slurm" / "start-cluster.sh", REPO / "tests" / "slurm" / "stop-cluster.sh"


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


def test_worker_jobs_and_lifetime_follow_the_config(tmp_path):
    from spray.run.dask_cluster import slurm_jobs, worker_lifetime

    def cluster(**slurm):
        raw = {"data": {"source": "digits"}, "model": {"factory": "m:f"},
               "cluster": {"scheduler": "slurm", "n_workers": 5, "slurm": slurm}}
        return validate_config(raw, tmp_path).cluster.model_dump()

    assert slurm_jobs(cluster()) == (5, 5)
    assert slurm_jobs(cluster(processes=2)) == (3, 3)  # jobs for 5 workers, 2 per job
    assert slurm_jobs(cluster(minimum_jobs=1, maximum_jobs=8)) == (1, 8)
    assert slurm_jobs(cluster(minimum_jobs=7)) == (7, 7)
    c = cluster(walltime="04:00:00")
    assert worker_lifetime(c["slurm"]) == 4 * 3600 - 300  # 5 minutes before the walltime
    assert "--lifetime" in slurm_cluster_kwargs(c)["worker_extra_args"]
    assert worker_lifetime(cluster(walltime="1-00:00:00", lifetime_margin="1h")["slurm"]) \
        == 23 * 3600
    assert worker_lifetime(cluster(walltime="00:02:00", lifetime_margin="5m")["slurm"]) == 60
    c = cluster(worker_extra_args=["--lifetime", "3h", "--lifetime-stagger", "4m"])
    assert worker_lifetime(c["slurm"]) is None
    assert slurm_cluster_kwargs(c)["worker_extra_args"].count("--lifetime") == 1
    with pytest.raises(ConfigError, match="minimum_jobs"):
        cluster(minimum_jobs=3, maximum_jobs=2)
    with pytest.raises(ConfigError, match="lifetime_margin"):
        cluster(lifetime_margin="soon")


def test_slurm_without_dask_jobqueue_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    cfg = validate_config({"data": {"source": "digits"}, "model": {"factory": "m:f"},
                           "cluster": {"scheduler": "slurm"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"spray-xai\[slurm\]"):
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


# --- a real SLURM cluster ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node SLURM cluster on 127.0.0.1 (SLURM_CONF set for sbatch/squeue/scancel).

    Uses the cluster of ``$SPRAY_SLURM_DIR`` if one runs there (``.ci/run`` starts it), otherwise
    starts one and stops it at the end. Skips only where the machine cannot run one (not root,
    no apt-get) and ``$SPRAY_SLURM_REQUIRED`` is unset (``.ci/run`` sets it); a cluster that
    fails to start fails the tests.
    """
    pytest.importorskip("dask_jobqueue")
    folder = Path(os.environ.get("SPRAY_SLURM_DIR") or tmp_path_factory.mktemp("slurm"))
    ours = not (folder / "started").is_file()
    proc = subprocess.run(["bash", str(START), str(folder)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode == 2 and not os.environ.get("SPRAY_SLURM_REQUIRED"):
        pytest.skip(f"no SLURM cluster on this machine: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"SLURM did not start:\n{proc.stdout}\n{proc.stderr}"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        if ours:
            subprocess.run(["bash", str(STOP), str(folder)], timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.mark.slurm
def test_cluster_script_is_idempotent(slurm):
    """Starting again reuses the running cluster and starts nothing more; it answers on
    127.0.0.1 and runs a job."""
    started = (slurm / "started").read_text()
    proc = subprocess.run(["bash", str(START), str(slurm)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "already running" in proc.stderr, proc.stderr
    assert (slurm / "started").read_text() == started
    conf = (slurm / "slurm.conf").read_text()
    assert "NodeAddr=127.0.0.1" in conf and "(127.0.0.1)" in conf
    job = subprocess.run(["sbatch", "--parsable", "--wait", "-o", str(slurm / "hello-%j.out"),
                          "--wrap", "echo hello from $SLURM_JOB_ID"], capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert (slurm / f"hello-{job}.out").read_text().strip() == f"hello from {job}"


def _jobs(name: str, states: str = "PD,R,CG,S") -> list[str]:
    """Ids of the SLURM jobs called ``name`` (``states``: squeue's --states; by default those
    not ended yet)."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", states, "-o", "%i"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _cancel(name: str) -> None:
    subprocess.run(["scancel", "-n", name], check=False)


def _logged_jobs(logs: Path, name: str) -> set[str]:
    """Job ids of the worker jobs dask-jobqueue submitted (one log file per job)."""
    return {p.stem.rsplit("-", 1)[1] for p in logs.glob(f"{name}-*.out")}


def _config(small_problem, name: str, **cluster) -> Path:
    """The scale test config (:func:`scale_config`) with these cluster settings, as NAME.yaml
    in the problem's folder (its factories, data and weights are found there)."""
    path = small_problem["root"] / f"{name}.yaml"
    shutil.copy(scale_config(small_problem, **cluster), path)
    return path


def _slurm_config(small_problem, tmp_path, name: str, **slurm) -> Path:
    """The scale test config on SLURM: two worker jobs of one core, one Dask thread each."""
    settings = {"walltime": "00:10:00", "cores": 1, "memory": "3GB", "job_name": name,
                "interface": "lo", "log_directory": str(tmp_path / "logs"),
                "local_directory": str(tmp_path / "worker-space"), **slurm}
    return _config(small_problem, name, scheduler="slurm", n_workers=2, worker_timeout=120,
                   torch_threads=1, slurm=settings)


def _assert_like_reference(out: Path, small_problem, tmp_path_factory) -> None:
    reference = reference_run(small_problem, tmp_path_factory.getbasetemp())
    assert_same_results(out, reference, atol=1e-6)
    assert summary(out)["flagged"] == summary(reference)["flagged"]


def _spray(config: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    return spray_process("-v", "run", config, "--output", out, env=env)


def _finish(proc: subprocess.Popen, logs: Path, timeout: float = 300) -> str:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*"))
                      if p.is_file())
    assert proc.returncode == 0, f"{stdout}\n{stderr}\n{tails}"
    return stderr


@pytest.mark.slurm
def test_run_on_slurm_worker_jobs(slurm, small_problem, tmp_path, tmp_path_factory):
    name = "spray-t-run"
    config = _slurm_config(small_problem, tmp_path, name)
    out, logs = tmp_path / "run", tmp_path / "logs"
    try:
        _finish(_spray(config, out), logs)
    finally:
        _cancel(name)
    info = run_info(out)
    assert info["scheduler"] == "slurm" and not info["failed"]
    assert info["chunks_computed"] == info["chunks_total"] > 0
    jobs = info["slurm_jobs"]
    assert jobs["lrp"] and jobs["analysis"], info
    assert set(jobs["lrp"]) | set(jobs["analysis"]) <= _logged_jobs(logs, name)
    _assert_like_reference(out, small_problem, tmp_path_factory)


@pytest.mark.slurm
def test_cancelled_worker_job_is_replaced(slurm, small_problem, tmp_path, tmp_path_factory):
    name = "spray-t-cancel"
    config = _slurm_config(small_problem, tmp_path, name)
    out, logs = tmp_path / "run", tmp_path / "logs"
    proc = _spray(config, out, env={"SPRAY_TEST_DELAY": "0.03"})  # ~0.5 s per chunk
    try:
        finished = wait_until(lambda: chunks_done(out)[0] >= 3 and chunks_done(out),
                              timeout=180, what="3 finished LRP chunks")
        assert finished[0] < finished[1] - 6, "the LRP stage ended before a job was cancelled"
        running = _jobs(name, "running")
        assert len(running) == 2, running
        victim = running[0]
        subprocess.run(["scancel", victim], check=True)
        stderr = _finish(proc, logs)
    finally:
        stop(proc)
        _cancel(name)
    info = run_info(out)
    submitted = _logged_jobs(logs, name)
    assert len(submitted) >= 3, (submitted, stderr)  # the cancelled job was replaced
    assert victim in submitted
    # every chunk finished once: a chunk finished in the cancelled job is found done (reused)
    assert info["chunks_computed"] + info["chunks_reused"] == info["chunks_total"]
    assert info["chunks_computed"] >= finished[1] - 2 and not info["failed"]
    _assert_like_reference(out, small_problem, tmp_path_factory)


GATED_DATASET = '''"""The test arrays; each item waits the seconds written in $SPRAY_TEST_DELAY_FILE (read per
item, so a test can slow the LRP stage down and then let the analyses load at full speed)."""
import os
import time
from pathlib import Path

import numpy as np
import torch


class Arrays(torch.utils.data.Dataset):
    def __init__(self, path):
        data = np.load(path)
        self.x, self.targets = data["x"], data["y"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        time.sleep(float(Path(os.environ["SPRAY_TEST_DELAY_FILE"]).read_text() or 0))
        return torch.as_tensor(self.x[i]), int(self.targets[i])


def build(path):
    return Arrays(path)
'''


@pytest.mark.slurm
def test_worker_jobs_reaching_their_walltime_are_replaced(slurm, small_problem, tmp_path,
                                                          tmp_path_factory):
    """Jobs of two minutes whose workers retire after 70 s (`lifetime_margin: 50s`) in a run
    whose LRP stage alone takes longer: new jobs take over and the run completes."""
    name = "spray-t-walltime"
    (small_problem["root"] / "gateddata.py").write_text(GATED_DATASET)
    config = _slurm_config(small_problem, tmp_path, name, walltime="00:02:00",
                           lifetime_margin="50s")
    raw = yaml.safe_load(config.read_text())
    raw["data"]["factory"] = "gateddata:build"
    config.write_text(yaml.safe_dump(raw))
    out, logs, delay = tmp_path / "run", tmp_path / "logs", tmp_path / "delay"
    delay.write_text("0.4")  # ~6 s per chunk, 12 chunks per worker
    proc = _spray(config, out, env={"SPRAY_TEST_DELAY_FILE": str(delay)})
    try:
        wait_until(lambda: (lambda d: d[1] and d[0] == d[1])(chunks_done(out)), timeout=400,
                   interval=1, what="the LRP stage")
        delay.write_text("0")  # the class analyses read their inputs at full speed
        stderr = _finish(proc, logs)
    finally:
        stop(proc)
        _cancel(name)
    info = run_info(out)
    retired = [p.name for p in logs.glob("*.err") if "worker-lifetime-reached" in p.read_text()]
    assert retired, stderr  # workers ended by their lifetime, before SLURM's time limit
    used = set(info["slurm_jobs"]["lrp"]) | set(info["slurm_jobs"].get("analysis", []))
    assert len(used) >= 3, (info["slurm_jobs"], stderr)  # replacement jobs did part of the work
    assert info["chunks_computed"] + info["chunks_reused"] == info["chunks_total"]
    assert not info["failed"]
    _assert_like_reference(out, small_problem, tmp_path_factory)


@pytest.mark.slurm
def test_sbatch_driver_on_slurm_resumes_after_cancel(slurm, small_problem, tmp_path,
                                                     tmp_path_factory):
    """`sbatch workflows/slurm-run.sbatch CONFIG` as users submit it; the driver job is cancelled
    halfway and submitted again: the second job computes only the missing chunks."""
    name = "spray-t-driver"
    config, out = _slurm_config(small_problem, tmp_path, name), tmp_path / "run"
    env = dict(os.environ, SPRAY_OUTPUT=str(out), SPRAY=f"{sys.executable} -m spray",
               SPRAY_TEST_DELAY="0.03")

    def submit(tag: str) -> str:
        return subprocess.run(
            ["sbatch", "--parsable", "--job-name", f"{name}-driver",
             "--output", str(tmp_path / f"driver-{tag}-%j.out"), str(SBATCH), str(config)],
            env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    def ended(job: str) -> bool:
        return job not in _jobs(f"{name}-driver")

    try:
        first = submit("first")
        wait_until(lambda: chunks_done(out)[0] >= 3, timeout=180, what="3 finished chunks")
        subprocess.run(["scancel", first], check=True)
        wait_until(lambda: ended(first), timeout=60, what="the cancelled driver job to end")
        wait_until(lambda: not _jobs(name), timeout=60, what="its worker jobs to end")
        before, total = chunks_done(out)
        assert 0 < before < total, (before, total)
        second = submit("second")
        wait_until(lambda: ended(second), timeout=300, interval=0.5, what="the second driver")
    finally:
        _cancel(f"{name}-driver")
        _cancel(name)
    text = "\n".join(p.read_text() for p in sorted(tmp_path.glob("driver-*.out")))
    assert "spray driver: exit code 0" in text, text
    info = run_info(out)
    assert info["scheduler"] == "slurm" and not info["failed"]
    assert info["chunks_reused"] >= before  # 0 finished chunks recomputed
    assert info["chunks_computed"] + info["chunks_reused"] == info["chunks_total"] == total
    assert info["chunks_computed"] <= total - before
    assert Path(out, "report", "summary.json").is_file()
    _assert_like_reference(out, small_problem, tmp_path_factory)


@pytest.mark.slurm
def test_lrp_tasks_run_only_in_jobs_with_the_resource(slurm, small_problem, tmp_path,
                                                      tmp_path_factory):
    """A scheduler on 127.0.0.1 and two worker jobs submitted with sbatch, one started with
    `--resources GPU=1` (CPU-only here): with `lrp_resources: {GPU: 1}` every LRP chunk runs in
    that job, none in the other."""
    name = "spray-t-resources"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / "scheduler.log", "w"),  # noqa: SIM115
                                 start_new_session=True)

    def worker_job(tag: str, *extra: str) -> str:
        command = " ".join([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                            "--host", "127.0.0.1", "--memory-limit", "0", "--death-timeout",
                            "60", "--local-directory", str(tmp_path / tag), *extra])
        return subprocess.run(
            ["sbatch", "--parsable", "--job-name", name, "-c", "1", "--mem", "3G",
             "--output", str(tmp_path / f"worker-{tag}-%j.out"), "--wrap", command],
            capture_output=True, text=True, check=True).stdout.strip()

    raw = {"lrp_resources": {"GPU": 1}, "scheduler": address, "worker_timeout": 120,
           "torch_threads": 1}
    config = _config(small_problem, name, **raw)
    out = tmp_path / "run"
    try:
        gpu = worker_job("gpu", "--resources", "GPU=1")
        cpu = worker_job("cpu")
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        proc = spray_process("-v", "run", config, "--output", out)
        _finish(proc, tmp_path)
    finally:
        _cancel(name)
        stop(scheduler, timeout=30)
    info = run_info(out)
    assert info["slurm_jobs"]["lrp"] == [gpu], info["slurm_jobs"]
    assert cpu not in info["slurm_jobs"]["lrp"]
    assert set(info["slurm_jobs"]["analysis"]) <= {gpu, cpu}
    assert info["chunks_computed"] == info["chunks_total"] and not info["failed"]
    _assert_like_reference(out, small_problem, tmp_path_factory)
