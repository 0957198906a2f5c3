"""A gate CI can trust: fingerprints of everything the result depends on, ``spray check`` failing
closed, ``spray run --check``, baselines of the same kind only, the watch band, and user files
that are never overwritten or deleted. Real runs (threaded Dask cluster), real files on disk.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import run_cli, train_smallnet

from spray.ci import check as chk
from spray.cli.main import main
from spray.data.models import model_code_fingerprint, model_fingerprint
from spray.errors import IncompleteRunError, StoreError
from spray.store import MANIFEST_NAME, OwnedFiles, RunLock


def _project(small_problem, root: Path) -> Path:
    """A copy of the small problem's files (data, weights, model code, config) in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("data.npz", "weights.pt", "smallnet.py"):
        shutil.copy(small_problem["root"] / name, root / name)
    cfg = copy.deepcopy(small_problem["raw_config"])
    cfg["output"] = "out"
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _run(root: Path, *extra, capsys=None) -> tuple[int, str]:
    code = main(["run", str(root / "config.yaml"), "--quiet", *map(str, extra)])
    out = capsys.readouterr() if capsys else None
    return code, (out.out + out.err) if out else ""


@pytest.fixture(scope="module")
def finished(small_problem, tmp_path_factory):
    """A finished run of the small problem (class 2 carries the planted stamp)."""
    root = _project(small_problem, tmp_path_factory.mktemp("gate") / "project")
    assert main(["run", str(root / "config.yaml"), "--quiet"]) == 0
    return root


def _copy(finished: Path, tmp_path: Path) -> Path:
    """The finished project and its run folder, copied (the run resumes in the copy)."""
    root = tmp_path / "project"
    shutil.copytree(finished, root)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "summary.json").read_text())


# ---------------------------------------------------------------- a model that learnt nothing


def test_a_model_trained_on_shuffled_labels_is_refused(finished, small_problem, tmp_path,
                                                       capsys):
    """The same network trained as long on labels shuffled across the data set learns nothing
    about the classes: its run finishes, and the gate refuses it (exit 3) with its accuracy
    against chance. The model trained on the true labels is vouched for."""
    good = _summary(finished / "out")["model_skill"]
    assert good["classes"] == 3 and good["p_value"] < 1e-30 and good["kappa"] > 0.9
    assert chk.skill_problems(_summary(finished / "out")) == []
    root = _project(small_problem, tmp_path / "shuffled")
    x, y = small_problem["x"], small_problem["y"]
    namespace: dict = {}
    exec((root / "smallnet.py").read_text(), namespace)
    shuffled = np.random.default_rng(5).permutation(y)
    torch.save(train_smallnet(namespace["build"], x, shuffled).state_dict(), root / "weights.pt")
    code, out = _run(root, capsys=capsys)
    assert code == 0, out  # the run itself finishes
    skill = _summary(root / "out")["model_skill"]
    assert skill["samples"] == len(y) and skill["p_value"] > 1e-3, skill
    assert skill["kappa"] < 0.1, skill
    assert "not above chance" in (root / "out" / "report" / "index.html").read_text()
    proc = run_cli("check", root / "out")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "the model has not learnt: accuracy" in proc.stderr


# ---------------------------------------------------------------- fingerprints


def test_one_changed_sample_recomputes_its_chunk_only(finished, tmp_path, capsys):
    """Samples are hashed per chunk as the tasks read them: editing one sample that no
    fingerprint probe reads recomputes exactly its chunk and its class's analysis."""
    root = _copy(finished, tmp_path)
    data = np.load(root / "data.npz")
    x, y = data["x"].copy(), data["y"]
    rows = np.flatnonzero(y == 1)
    changed = int(rows[70])  # row 70 of class 1: chunk 1 (chunk_size 64)
    x[changed] = np.flip(x[changed], axis=-1)
    np.savez(root / "data.npz", x=x, y=y)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["class_names"] = ["nought", "one", "two"]  # names come from the current config
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = _summary(root / "out")
    code, msg = _run(root, capsys=capsys)
    assert code == 0, msg
    info = json.loads((root / "out" / "run.json").read_text())
    assert info["chunks_computed"] == 1 and info["chunks_reused"] == info["chunks_total"] - 1
    assert info["analyses_reused"] == 2  # classes 0 and 2 keep their analysis
    g = zarr.open_group(str(root / "out" / "spray.zarr"), mode="r")
    stored = g["classes"]["1"]["relevance"][70]
    assert not np.allclose(stored, zarr.open_group(str(finished / "out" / "spray.zarr"),
                                                   mode="r")["classes"]["1"]["relevance"][70])
    after = _summary(root / "out")
    assert [e["name"] for e in after["classes"]] == ["nought", "one", "two"]
    assert after["fingerprints"]["samples"] != before["fingerprints"]["samples"]
    assert after["fingerprints"]["data"] == before["fingerprints"]["data"]  # same dataset
    assert chk.gate_problems(after, root / "out") == []


def test_model_code_is_fingerprinted_with_its_buffers():
    """Same weights, other code (ReLU -> Tanh) or other buffers: another fingerprint."""
    torch.manual_seed(0)
    relu = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    tanh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    tanh.load_state_dict(relu.state_dict())
    assert model_fingerprint(relu) != model_fingerprint(tanh)
    assert model_code_fingerprint(relu) != model_code_fingerprint(tanh)
    same = copy.deepcopy(relu)
    assert model_fingerprint(same) == model_fingerprint(relu)
    same.register_buffer("offset", torch.zeros(1), persistent=False)  # not in the state_dict
    fp = model_fingerprint(same)
    same.offset += 1
    assert model_fingerprint(same) != fp


def test_changed_model_code_refuses_the_store(finished, tmp_path):
    """Every map depends on the model: a store made with other model code is refused (exit 2,
    naming the model), never mixed."""
    root = _copy(finished, tmp_path)
    code = (root / "smallnet.py").read_text()
    assert "ReLU" in code
    (root / "smallnet.py").write_text(code.replace("ReLU", "Tanh"))
    proc = run_cli("run", root / "config.yaml", "--quiet", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "different model" in proc.stderr and "Traceback" not in proc.stderr
    g = zarr.open_group(str(root / "out" / "spray.zarr"), mode="r")
    assert g.attrs["run_state"] == "finished"  # the refused run touched nothing


def test_classes_dropped_from_the_config_leave_the_summary(finished, tmp_path, capsys):
    root = _copy(finished, tmp_path)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["classes"] = [0, 1]
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, msg = _run(root, capsys=capsys)
    assert code == 0, msg
    assert [e["class"] for e in _summary(root / "out")["classes"]] == [0, 1]
    assert main(["check", str(root / "out")]) == 0
    assert "two" not in capsys.readouterr().out


# ---------------------------------------------------------------- fail closed


def test_a_failed_class_fails_the_gate_with_exit_3(finished, tmp_path, capsys):
    """A NaN in one sample of the planted class: the class fails, the run and the check exit 3;
    --allow-incomplete judges the classes that finished."""
    root = _copy(finished, tmp_path)
    data = np.load(root / "data.npz")
    x, y = data["x"].copy(), data["y"]
    bad = int(np.flatnonzero(y == 2)[3])
    x[bad, 0, 5, 5] = np.nan
    np.savez(root / "data.npz", x=x, y=y)
    code, msg = _run(root, capsys=capsys)
    assert code == 3, msg
    assert str(bad) in msg and "Traceback" not in msg
    assert main(["check", str(root / "out")]) == 3
    err = capsys.readouterr().err
    assert "class two (2) is failed" in err and "--allow-incomplete" in err
    junit = tmp_path / "junit.xml"
    assert main(["check", str(root / "out"), "--allow-incomplete", "--junit", str(junit)]) == 0
    assert ET.parse(junit).getroot().get("errors") == "1"


def test_a_summary_of_an_earlier_run_is_stale(finished, tmp_path):
    """The summary belongs to the store's last run: a summary left from an earlier run while
    the store was written again is refused (exit 3), and so is a summary without a run state."""
    root = _copy(finished, tmp_path)
    summary = _summary(root / "out")
    assert chk.gate_problems(summary, root / "out") == []
    from spray.store import mark_run, open_store

    group = open_store(root / "out", mode="a")
    mark_run(group, "running")  # what a started rerun records
    problems = chk.gate_problems(summary, root / "out")
    assert any("did not finish" in p for p in problems), problems
    with pytest.raises(IncompleteRunError, match="did not finish"):
        chk.check(root / "out")
    mark_run(group, "finished")  # a later run of the store, not the one of this summary
    with pytest.raises(IncompleteRunError, match="stale"):
        chk.check(root / "out")
    bare = tmp_path / "summary.json"
    bare.write_text(json.dumps({k: v for k, v in summary.items() if k != "run_state"}))
    with pytest.raises(IncompleteRunError, match="no run state"):
        chk.check(bare)


@pytest.mark.parametrize("summary, needle", [
    ({"classes": [{}]}, "no class number"),
    ({"classes": [{"class": 1, "name": "a", "status": "ok", "flagged": False, "score": "high",
                   "clusters": []}]}, "'score'"),
    ({"classes": "all"}, "no 'classes' list"),
    ({"classes": [{"class": 1, "name": "a", "status": "ok", "flagged": True, "score": 3.0,
                   "clusters": [], "clean_rate": {"rate": "low"}}]}, "'clean_rate'"),
])
def test_damaged_summaries_are_named(tmp_path, summary, needle):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    with pytest.raises(StoreError, match=needle):
        chk.load_summary(path)


def test_nan_score_in_a_summary_is_refused(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"classes": [{"class": 2, "name": "two", "status": "ok", "flagged": false, '
                    '"score": NaN, "threshold": 2.0, "clusters": []}]}')
    with pytest.raises(StoreError, match="class 2: key 'score'"):
        chk.load_summary(path)


def test_nan_threshold_is_refused(small_problem, tmp_path, capsys):
    """flags.threshold: .nan made every comparison false: class 2 (score 6.5) passed."""
    root = _project(small_problem, tmp_path / "p")
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["pipeline"]["flags"] = {"threshold": float("nan")}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, msg = _run(root, capsys=capsys)
    assert code == 2 and "flags.threshold" in msg and "finite" in msg, msg
    preset = root / "preset.yaml"
    preset.write_text("extends: spray-default\nflags:\n  threshold: .inf\n")
    cfg["pipeline"] = "preset.yaml"
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, msg = _run(root, capsys=capsys)
    assert code == 2 and "flags.threshold" in msg, msg
    assert not (root / "out").exists()


# ---------------------------------------------------------------- run --check, baselines


def test_run_check_gates_in_one_command(finished, tmp_path, capsys, monkeypatch):
    """``spray run --check`` exits 1 on the planted class, writes JUnit and Markdown (with a
    link to the CI run, no HTML entities) and prints the verdict."""
    root = _copy(finished, tmp_path)
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.example")
    monkeypatch.setenv("GITHUB_REPOSITORY", "lab/model")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    junit, md = tmp_path / "j.xml", tmp_path / "s.md"
    code, out = _run(root, "--check", "--junit", junit, "--markdown", md, capsys=capsys)
    assert code == 1, out
    assert "FLAGGED" in out and "flagged: two" in out
    assert ET.parse(junit).getroot().get("failures") == "1"
    text = md.read_text()
    assert "https://github.example/lab/model/actions/runs/42" in text
    assert "&gt;" not in text and "&lt;" not in text and "≥" in text
    code, out = _run(root, capsys=capsys)  # without --check: exit 0, the verdict printed
    assert code == 0
    assert "flagged: two (2): score" in out and "class_2.html" in out and "next best" in out


def test_gitlab_job_url():
    assert chk.ci_run_url({"CI_JOB_URL": "https://gitlab.example/g/p/-/jobs/7"}) == \
        "https://gitlab.example/g/p/-/jobs/7"
    assert chk.ci_run_url({}) is None


def test_baseline_of_another_pipeline_is_refused(finished, tmp_path, capsys):
    root = _copy(finished, tmp_path)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["pipeline"]["affinity"] = {"k": 7}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, msg = _run(root, "--baseline", finished / "out", capsys=capsys)
    assert code == 2, msg
    assert "pipeline" in msg and "--baseline-any" in msg
    assert "model_code" not in msg.split("differ:")[1].split("A baseline")[0]
    assert main(["check", str(root / "out"), "--baseline", str(finished / "out"),
                 "--baseline-any"]) == 0  # the same flag, accepted in the baseline
    assert main(["check", str(finished / "out"), "--baseline", str(finished / "out")]) == 0


def test_baseline_of_another_class_list_is_refused(finished):
    summary = _summary(finished / "out")
    other = copy.deepcopy(summary)
    other["fingerprints"]["classes"] = "0123456789abcdef"
    with pytest.raises(Exception, match="classes"):
        chk.check_baseline(summary, other)
    chk.check_baseline(summary, copy.deepcopy(summary))


def test_watch_band(finished, tmp_path, capsys):
    """A class within the watch margin below the threshold is listed as 'watch', never fails."""
    summary = _summary(finished / "out")
    assert summary["watch_margin"] == 0.5 and "watch" in summary
    e = next(e for e in summary["classes"] if e["class"] == 0)
    e["score"] = e["threshold"] - 0.2
    for entry in summary["classes"]:
        entry.pop("watch", None)
        entry["flagged"] = False
    summary.pop("watch_margin")
    summary["flagged"] = []
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    md = tmp_path / "s.md"
    assert chk.check(path, markdown_path=str(md)) == 0
    out = capsys.readouterr().out
    assert "watch" in out and "zero" in out.split("watch (")[1]
    assert "### Watch" in md.read_text()


# ---------------------------------------------------------------- user files


def test_output_dot_never_overwrites_the_users_config(small_problem, tmp_path, capsys):
    """``output: .`` next to the user's own config.yaml: refused, the config is unchanged."""
    root = tmp_path / "p"
    root.mkdir()
    cfg = {"data": {"source": "digits"}, "model": {"factory": "torchvision.models:resnet18"},
           "output": "."}
    text = yaml.safe_dump(cfg)
    (root / "config.yaml").write_text(text)
    code = main(["run", str(root / "config.yaml"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "config.yaml" in err, err
    assert (root / "config.yaml").read_text() == text
    assert sorted(p.name for p in root.iterdir()) == ["config.yaml"]


def test_overwrite_never_deletes_a_users_report(finished, tmp_path, capsys):
    root = _copy(finished, tmp_path)
    out = root / "out"
    shutil.rmtree(out / "report")
    (out / "report").mkdir()
    (out / "report" / "notes.md").write_text("mine")
    code, msg = _run(root, "--overwrite", capsys=capsys)
    assert code == 2 and "report" in msg and "did not write" in msg, msg
    assert (out / "report" / "notes.md").read_text() == "mine"
    assert (out / "spray.zarr").is_dir()  # nothing deleted


def test_edited_run_config_is_not_overwritten(finished, tmp_path, capsys):
    root = _copy(finished, tmp_path)
    written = root / "out" / "config.yaml"
    written.write_text(written.read_text() + "# my notes\n")
    code, msg = _run(root, capsys=capsys)
    assert code == 2 and "config.yaml" in msg, msg
    assert written.read_text().endswith("# my notes\n")


def test_demo_refuses_a_finished_run_before_training(finished, tmp_path):
    """``spray demo --output`` over a run that is not a demo's: refused at once (no training,
    nothing written or deleted)."""
    out = tmp_path / "prod"
    shutil.copytree(finished / "out", out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    proc = run_cli("demo", "--output", out, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "not a demo" in proc.stderr and "trained" not in proc.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_export_never_overwrites_a_users_project(finished, tmp_path, capsys):
    target = tmp_path / "virelay"
    target.mkdir()
    (target / "project.yaml").write_text("my project\n")
    code = main(["export", "virelay", str(finished / "out"), str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "project.yaml" in err, err
    assert (target / "project.yaml").read_text() == "my project\n"
    assert sorted(p.name for p in target.iterdir()) == ["project.yaml"]
    fresh = tmp_path / "fresh"
    assert main(["export", "virelay", str(finished / "out"), str(fresh)]) == 0
    assert main(["export", "virelay", str(finished / "out"), str(fresh)]) == 0  # its own files
    (fresh / "dataset.h5").write_bytes(b"changed by the user")
    assert main(["export", "virelay", str(finished / "out"), str(fresh)]) == 2
    assert (fresh / "dataset.h5").read_bytes() == b"changed by the user"


def test_a_run_folder_from_before_the_manifest_is_adopted(finished, tmp_path, capsys):
    """A run folder written before spray listed its files: its report is rebuilt, not refused."""
    out = tmp_path / "old"
    shutil.copytree(finished / "out", out)
    (out / MANIFEST_NAME).unlink()
    (out / "report" / ".spray-folder").unlink()
    assert main(["report", str(out)]) == 0, capsys.readouterr().err
    assert OwnedFiles(out).owns("report") and OwnedFiles(out).owns("config.yaml")


def test_owned_files_refuse_what_spray_did_not_write(tmp_path):
    files = OwnedFiles(tmp_path)
    (tmp_path / "theirs.txt").write_text("x")
    with pytest.raises(StoreError, match="not written by spray"):
        files.write_text("theirs.txt", "y")
    with pytest.raises(StoreError, match="refusing to delete"):
        files.remove("theirs.txt")
    files.write_text("ours.txt", "a")
    files.write_text("ours.txt", "b")
    assert (tmp_path / "ours.txt").read_text() == "b"
    files.remove("ours.txt")
    assert not (tmp_path / "ours.txt").exists() and (tmp_path / "theirs.txt").exists()
    assert "theirs.txt" not in json.loads((tmp_path / MANIFEST_NAME).read_text())["entries"]


# ---------------------------------------------------------------- the run lock


def _contend(path: str, start, queue) -> None:
    start.wait()
    try:
        with RunLock(Path(path)):
            holder = Path(path) / "holders"
            fd = os.open(holder, os.O_CREAT | os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"+")
            os.close(fd)
            now = len(holder.read_bytes())
            queue.put(("held", now))
            fd = os.open(holder, os.O_CREAT | os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"-")
            os.close(fd)
    except StoreError:
        queue.put(("refused", 0))


def test_lock_race_with_many_processes(tmp_path):
    """Processes racing for the lock (some over a stale lock file of a dead process, some over
    an empty one): never two holders at once."""
    ctx = multiprocessing.get_context("fork")
    for trial in range(12):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        if trial % 3 == 1:
            (folder / ".spray.lock").write_text("somehost 999999\n")
        elif trial % 3 == 2:
            (folder / ".spray.lock").write_text("")
        start, queue = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(folder), start, queue)) for _ in range(8)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(30)
        results = [queue.get(timeout=5) for _ in procs]
        assert any(r[0] == "held" for r in results)
        log = (folder / "holders").read_text()
        depth = 0
        for ch in log:  # +/- pairs never overlap
            depth += 1 if ch == "+" else -1
            assert depth in (0, 1), log


# ---------------------------------------------------------------- property tests

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_yaml_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["data:", "  source: npz", "  path: data.npz", "model:",
                              "  factory: smallnet:build", "classes: [0, 1]", "a: &a [1, 2]",
                              "b: [*a, *a]", "  scale: .nan", "output: .", "- 1", "{", "]",
                              "cluster: {n_workers: 0}", "attribution: {target: 9}",
                              "\x00", "\ufeff", "key: !!python/object:os.system x"]),
             max_size=8).map("\n".join))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_yaml_text)
def test_any_yaml_gives_a_config_or_a_clear_error(tmp_path_factory, body):
    from spray.config.run_config import load_config
    from spray.errors import ConfigError

    root = tmp_path_factory.mktemp("yaml")
    (root / "data.npz").write_bytes(b"")
    path = root / "config.yaml"
    path.write_text(body, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err)


_READ_BY_SUMMARY = ["zarr.json", "index", "eigenvalues", "eigengaps", "labels", "prediction"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=st.sampled_from(["0", "1", "2"]), array=st.sampled_from(_READ_BY_SUMMARY),
       keep=st.floats(0.0, 0.9))
def test_any_truncated_chunk_names_its_class(finished, tmp_path_factory, c, array, keep):
    """Truncating any file the summary reads: a clear error naming the class (or a summary
    when the file still decodes); the other classes' files are untouched."""
    from spray.report.summary import build_summary

    out = tmp_path_factory.mktemp("trunc") / "out"
    shutil.copytree(finished / "out", out)
    cls = out / "spray.zarr" / "classes" / c
    target = cls / array if array == "zarr.json" else \
        next(f for f in sorted((cls / array).rglob("*")) if f.is_file() and f.name != "zarr.json")
    others = {f: f.read_bytes() for f in (out / "spray.zarr" / "classes").rglob("*")
              if f.is_file() and cls not in f.parents}
    data = target.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    try:
        build_summary(out)
    except StoreError as err:
        assert f"classes/{c}" in str(err), str(err)
    assert all(f.read_bytes() == b for f, b in others.items())
