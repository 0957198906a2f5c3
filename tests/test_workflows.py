"""The CI templates in workflows/ run: their commands are executed against the demo config.

The install steps (pip) are checked for presence but not executed (the test environment already
has spray); every other command is run with bash exactly as written, with the template's own
variables, except that ``SPRAY_CONFIG`` points at the demo's config (restricted to two classes,
run on threads, without t-SNE, with a model trained for fewer epochs to keep the test fast).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"


def _github():
    doc = yaml.safe_load((WORKFLOWS / "github-actions.yml").read_text())
    job = doc["jobs"]["spray"]
    steps = [s["run"] for s in job["steps"] if "run" in s]
    return dict(doc["env"]), steps


def _gitlab():
    doc = yaml.safe_load((WORKFLOWS / "gitlab-ci.yml").read_text())
    job = doc["spray-clever-hans"]
    return dict(job["variables"]), list(job["before_script"]), list(job["script"])


def test_templates_parse_and_gate_on_spray_check():
    env, steps = _github()
    assert {"SPRAY_CONFIG", "SPRAY_RUN", "SPRAY_BASELINE"} <= set(env)
    assert any("pip install" in s and "SPRAY_PACKAGE" in s for s in steps)
    assert any(s.strip().startswith("spray run ") for s in steps)
    check = next(s for s in steps if "spray check" in s)
    for flag in ("--junit", "--markdown", "$GITHUB_STEP_SUMMARY", "--baseline"):
        assert flag in check
    variables, before, script = _gitlab()
    assert any("pip install" in s for s in before)
    assert script[0].startswith("spray run ") and script[1].startswith("spray check ")
    doc = yaml.safe_load((WORKFLOWS / "gitlab-ci.yml").read_text())["spray-clever-hans"]
    assert doc["artifacts"]["reports"]["junit"] == "spray-junit.xml"
    assert doc["artifacts"]["when"] == "always"


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    """The demo's data, model and config, with the model trained briefly and 2 classes."""
    from spray.cli import demo

    root = tmp_path_factory.mktemp("wf")
    folder = root / "demo"
    folder.mkdir()
    torch.set_num_threads(2)
    data = demo.make_data(np.random.default_rng(demo.SEED))
    model = demo.train_model(data["x_train"], data["y_train"], epochs=4)
    torch.save(model.state_dict(), folder / "model.pt")
    np.savez(folder / "data.npz", x=data["x_test"], y=data["y_test"])
    config = {
        "data": {"source": "npz", "path": "data.npz"},
        "model": {"factory": "spray.cli.demo:build_model", "weights": "model.pt"},
        "attribution": {"composite": "epsilon-plus-flat", "target": "label", "chunk_size": 128},
        "classes": [demo.PLANTED_CLASS, 5],
        "class_names": [f"digit {i}" for i in range(10)],
        "pipeline": {"preset": "spray-default", "embedding": {"method": "none"}},
        "cluster": {"scheduler": "threads", "n_workers": 2, "progress": False},
        "output": "runs/unused",
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return root, path


def _bash(command: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    assert "${{" not in command, "GitHub expressions cannot run in a shell step"
    full = dict(os.environ)
    full.update({k: str(v) for k, v in env.items()})
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=900)


def _run_steps(commands, env, cwd):
    results = []
    for command in commands:
        if "pip install" in command:
            continue
        results.append((command, _bash(command, env, cwd)))
        if results[-1][1].returncode != 0:
            break
    return results


@pytest.mark.slow
def test_github_workflow_commands_run_on_the_demo(demo_config, tmp_path):
    root, config = demo_config
    env, steps = _github()
    env.update({"SPRAY_CONFIG": str(config), "GITHUB_ACTIONS": "true",
                "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md")})
    results = _run_steps(steps, env, root)
    (run_cmd, run_proc), (check_cmd, check_proc) = results
    assert run_cmd.startswith("spray run") and run_proc.returncode == 0, run_proc.stderr
    run_dir = root / env["SPRAY_RUN"]
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    flagged = summary["flagged"]
    assert check_proc.returncode == (1 if flagged else 0), check_proc.stdout + check_proc.stderr
    suite = ET.parse(run_dir / "spray-junit.xml").getroot()
    assert int(suite.get("tests")) == 2 and int(suite.get("failures")) == len(flagged)
    assert "## spray: Clever-Hans check" in (tmp_path / "step-summary.md").read_text()
    assert check_proc.stdout.count("::error ") == len(flagged)

    # accept this run as the baseline: the same job passes and says why
    env["SPRAY_BASELINE"] = str(run_dir / "report" / "summary.json")
    again = _bash(steps[-1], env, root)
    assert again.returncode == 0, again.stdout + again.stderr
    if flagged:
        assert f"{len(flagged)} accepted" in again.stdout


@pytest.mark.slow
def test_gitlab_job_commands_run_on_the_demo(demo_config, tmp_path):
    root, config = demo_config
    variables, before, script = _gitlab()
    # the run folder of the GitHub test when it ran first: `spray run` then resumes it
    variables.update({"SPRAY_CONFIG": str(config), "SPRAY_RUN": str(root / "runs" / "ci")})
    results = _run_steps(script, variables, tmp_path)
    (_, run_proc), (_, check_proc) = results
    assert run_proc.returncode == 0, run_proc.stderr
    summary = json.loads((root / "runs" / "ci" / "report" / "summary.json").read_text())
    assert check_proc.returncode == (1 if summary["flagged"] else 0), check_proc.stdout
    assert (tmp_path / "spray-junit.xml").is_file() and (tmp_path / "spray-summary.md").is_file()
    # artifact paths of the template exist after the job
    doc = yaml.safe_load((WORKFLOWS / "gitlab-ci.yml").read_text())["spray-clever-hans"]
    for path in doc["artifacts"]["paths"]:
        resolved = Path(path.replace("$SPRAY_RUN", variables["SPRAY_RUN"]))
        assert (tmp_path / resolved).exists(), resolved
