"""The bad-input matrix: every way input can be wrong ends in one clear message and exit code 2,
with finished work intact. One test per row; runs go through ``spray.cli.main.main`` in-process
(threaded Dask cluster) unless the row needs a separate process.
"""

from __future__ import annotations

import copy
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spray.cli.main import main


@pytest.fixture
def project(small_problem, tmp_path):
    """A copy of the small problem's files in a fresh folder, plus helpers to run the CLI."""
    root = tmp_path
    for name in ("data.npz", "weights.pt", "smallnet.py"):
        (root / name).write_bytes((small_problem["root"] / name).read_bytes())
    config = copy.deepcopy(small_problem["raw_config"])
    config["output"] = "out"

    class Project:
        path = root
        cfg = config

        def write(self, cfg=None, name="config.yaml"):
            (root / name).write_text(yaml.safe_dump(cfg or self.cfg, allow_unicode=True))
            return root / name

        def run(self, capsys, cfg=None, *extra):
            code = main(["run", str(self.write(cfg)), "--quiet", *map(str, extra)])
            out = capsys.readouterr()
            return code, out.err + out.out

        def save_data(self, x, y, name="data.npz"):
            np.savez(root / name, x=x, y=y)

    return Project()


def _expect(code, message, *needles, exit_code=2):
    assert code == exit_code, message
    for needle in needles:
        assert needle in message, message
    assert "Traceback" not in message


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.update(colour="red"), "colour"),
    (lambda c: c["attribution"].update(batch_size="many"), "attribution.batch_size"),
    (lambda c: c["data"].update(path="nowhere.npz"), "nowhere.npz"),
    (lambda c: c.update(pipeline="no-such-preset"), "no-such-preset"),
    (lambda c: c["attribution"].update(composite="epsilon-minus-nothing"), "epsilon-minus-nothing"),
    (lambda c: c["attribution"].update(chunk_size=-4), "attribution.chunk_size"),
    (lambda c: c["cluster"].update(n_workers=0), "cluster.n_workers"),
    (lambda c: c.update(pipeline={"preset": "spray-default", "affinity": {"k": 10_000}}), "affinity.k"),
    (lambda c: c.update(classes=[]), "classes"),
    (lambda c: c.update(classes=[0, 9]), "9"),
])
def test_config_errors(project, capsys, edit, needle):
    cfg = copy.deepcopy(project.cfg)
    edit(cfg)
    code, msg = project.run(capsys, cfg)
    _expect(code, msg, needle)
    assert not (project.path / "out" / "spray.zarr").exists()


# ---------------------------------------------------------------- data

def test_labels_do_not_match_samples(project, capsys, small_problem):
    project.save_data(small_problem["x"], small_problem["y"][:-5])
    code, msg = project.run(capsys)
    _expect(code, msg, "labels")


def test_wrong_dtype(project, capsys, small_problem):
    project.save_data(small_problem["x"].astype("U3"), small_problem["y"])
    code, msg = project.run(capsys)
    _expect(code, msg, "numeric")


def test_label_out_of_range_names_the_sample(project, capsys, small_problem):
    y = small_problem["y"].copy()
    y[17] = 5  # the model has 3 outputs
    project.save_data(small_problem["x"], y)
    code, msg = project.run(capsys)
    _expect(code, msg, "17")


def test_empty_and_tiny_classes_are_skipped_with_a_reason(project, capsys, small_problem):
    x, y = small_problem["x"], small_problem["y"].copy()
    keep = np.concatenate([np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:2]])
    project.save_data(x[keep], y[keep])
    cfg = copy.deepcopy(project.cfg)
    cfg["class_names"] = None
    code, msg = project.run(capsys, cfg)
    assert code == 0, msg
    summary = json.loads((project.path / "out" / "report" / "summary.json").read_text())
    status = {e["class"]: e for e in summary["classes"]}
    assert status[2]["status"] == "skipped" and "2 sample" in status[2]["reason"]
    assert status[0]["status"] == status[1]["status"] == "ok"


def test_small_class_gets_smaller_k_and_a_warning():
    from spray.analysis.analyze import analyze

    rng = np.random.default_rng(0)
    result = analyze(rng.normal(size=(6, 5)), embed=False, affinity={"k": 8})
    assert result.k <= 5
    assert result.warnings and "k" in " ".join(result.warnings)


def test_all_zero_relevance_does_not_crash():
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline

    pipe = load_pipeline("spray-default")
    features = preprocess(np.zeros((30, 16, 16), dtype=np.float32), pipe["preprocess"])
    assert np.isfinite(features).all()
    result = analyze(features, pipeline=pipe, embed=False)
    ev = result.eigenvalues
    assert np.all(ev >= -1e-8) and np.all(ev <= 2 + 1e-8)


def test_nan_input_marks_its_class_and_others_finish(project, capsys, small_problem):
    x = small_problem["x"].copy()
    bad = int(np.flatnonzero(small_problem["y"] == 2)[3])
    x[bad, 0, 5, 5] = np.nan
    project.save_data(x, small_problem["y"])
    code, msg = project.run(capsys)
    _expect(code, msg, str(bad), "NaN", exit_code=3)
    summary = json.loads((project.path / "out" / "report" / "summary.json").read_text())
    status = {e["class"]: e["status"] for e in summary["classes"]}
    assert status == {0: "ok", 1: "ok", 2: "failed"}


def test_duplicated_samples_are_analysed():
    from spray.analysis.analyze import analyze

    rng = np.random.default_rng(1)
    base = rng.normal(size=(5, 8))
    features = np.concatenate([np.repeat(base, 12, axis=0), rng.normal(size=(20, 8))])
    result = analyze(features, embed=False)
    assert np.all(np.diff(result.eigenvalues) >= -1e-9)
    assert result.eigenvalues[0] > -1e-8 and result.eigenvalues[-1] < 2 + 1e-8


# ---------------------------------------------------------------- model

def test_factory_not_found(project, capsys):
    cfg = copy.deepcopy(project.cfg)
    cfg["model"]["factory"] = "smallnet:nothing_here"
    code, msg = project.run(capsys, cfg)
    _expect(code, msg, "nothing_here")


def test_weights_do_not_match(project, capsys):
    torch.save({"0.weight": torch.zeros(2, 2)}, project.path / "weights.pt")
    code, msg = project.run(capsys)
    _expect(code, msg, "model.weights")


def test_forward_raises(project, capsys):
    (project.path / "broken.py").write_text(
        "import torch\n\nclass Broken(torch.nn.Module):\n    def forward(self, x):\n"
        "        raise RuntimeError('boom in forward')\n\ndef build():\n    return Broken()\n")
    cfg = copy.deepcopy(project.cfg)
    cfg["model"] = {"factory": "broken:build"}
    code, msg = project.run(capsys, cfg)
    _expect(code, msg, "boom in forward")


def test_pickle_checkpoint_is_refused(project, capsys):
    sys.path.insert(0, str(project.path))
    try:
        import smallnet  # noqa: PLC0415

        torch.save(smallnet.build(), project.path / "weights.pt")
    finally:
        sys.path.remove(str(project.path))
    code, msg = project.run(capsys)
    _expect(code, msg, "trust_pickle")


def test_unsupported_layer_is_named(project, capsys):
    (project.path / "oddnet.py").write_text(
        "import torch\n\nclass Odd(torch.nn.Module):\n    def forward(self, x):\n"
        "        return x\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(),\n"
        "        torch.nn.Linear(1024, 3), torch.nn.Softplus(), torch.nn.GroupNorm(1, 3))\n")
    cfg = copy.deepcopy(project.cfg)
    cfg["model"] = {"factory": "oddnet:build"}
    code, msg = project.run(capsys, cfg)
    _expect(code, msg, "GroupNorm")  # LayerNorm has a rule now; GroupNorm has none


# ---------------------------------------------------------------- store

def test_output_folder_with_other_files(project, capsys):
    (project.path / "out").mkdir()
    (project.path / "out" / "thesis.tex").write_text("precious")
    code, msg = project.run(capsys)
    _expect(code, msg, "other files")
    assert (project.path / "out" / "thesis.tex").read_text() == "precious"


def test_foreign_zarr_store(project, capsys):
    import zarr

    zarr.open_group(str(project.path / "out" / "spray.zarr"), mode="w").attrs["hello"] = 1
    code, msg = project.run(capsys)
    _expect(code, msg, "spray.zarr", "spray did not write")


def test_corrupt_analysis_array_is_analysed_again(project, capsys):
    """A truncated analysis chunk: a rerun analyses that class again (its maps are intact) and
    keeps the other classes; it used to keep the damaged analysis."""
    import zarr

    code, msg = project.run(capsys)
    assert code == 0, msg
    store = project.path / "out" / "spray.zarr"
    before = zarr.open_group(str(store), mode="r")["classes"]["1"]["eigenvalues"][:]
    array = store / "classes" / "1" / "eigenvalues"
    chunk = next(p for p in array.rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:5])  # truncated chunk
    kept = (store / "classes" / "0" / "relevance").stat().st_mtime_ns
    code, msg = project.run(capsys)
    assert code == 0, msg
    after = zarr.open_group(str(store), mode="r")["classes"]["1"]["eigenvalues"][:]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-9)
    info = json.loads((project.path / "out" / "run.json").read_text())
    assert info["analyses_reused"] == 2 and info["chunks_computed"] == 0
    assert (store / "classes" / "0" / "relevance").stat().st_mtime_ns == kept


def test_analysis_by_other_code_is_analysed_again(project, capsys):
    """An analysis stored by other analysis or verdict code (an older rule, before a result key
    existed) is made again on resume; the classes analysed by this code are kept."""
    import zarr

    from spray.run.tasks import analysis_code

    code, msg = project.run(capsys)
    assert code == 0, msg
    store = project.path / "out" / "spray.zarr"
    group = zarr.open_group(str(store), mode="a")["classes"]
    old = dict(group["1"].attrs["analysis"])
    assert old["code"] == analysis_code()
    group["1"].attrs["analysis"] = {**old, "code": "0" * 16, "flags": {**old["flags"],
                                                                     "score": -99.0}}
    legacy = dict(group["2"].attrs["analysis"])
    del legacy["code"]  # written by a spray that recorded no code digest
    group["2"].attrs["analysis"] = legacy
    code, msg = project.run(capsys)
    assert code == 0, msg
    info = json.loads((project.path / "out" / "run.json").read_text())
    assert info["analyses_reused"] == 1 and info["chunks_computed"] == 0
    group = zarr.open_group(str(store), mode="r")["classes"]
    for c in ("1", "2"):
        assert group[c].attrs["analysis"]["code"] == analysis_code()
    assert group["1"].attrs["analysis"]["flags"]["score"] == old["flags"]["score"]


def test_code_digest_follows_every_analysis_file(tmp_path):
    """The digest changes with a byte of any file below the parts, with a new file and with a
    renamed one, and not with a file of another kind."""
    import shutil

    import spray
    from spray.run.tasks import ANALYSIS_CODE, analysis_code, code_digest

    root = tmp_path / "spray"
    src = Path(spray.__file__).parent
    for part in ("analysis", "verdict"):
        shutil.copytree(src / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "run").mkdir()
    shutil.copy(src / "run" / "tasks.py", root / "run" / "tasks.py")
    first = code_digest(root)
    assert first == analysis_code()
    (root / "verdict" / "notes.txt").write_text("not code")
    assert code_digest(root) == first
    edits = [lambda: (root / "verdict" / "members.py").write_text(
                 (root / "verdict" / "members.py").read_text() + "\n"),
             lambda: (root / "analysis" / "extra.py").write_text(""),
             lambda: (root / "analysis" / "extra.py").rename(root / "analysis" / "other.py"),
             lambda: (root / "run" / "tasks.py").write_text("")]
    seen = {first}
    for edit in edits:
        edit()
        now = code_digest(root, ANALYSIS_CODE)
        assert now not in seen
        seen.add(now)


def test_report_of_a_folder_without_store(tmp_path, capsys):
    code = main(["check", str(tmp_path)])
    _expect(code, capsys.readouterr().err, "no spray store")


def test_full_disk_is_a_clear_error(project):
    """A file-size limit makes writes fail like a full disk: exit 2, a message, no traceback."""
    cfg_path = project.write()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))

    proc = subprocess.run([sys.executable, "-m", "spray", "run", str(cfg_path), "--quiet"],
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    _expect(proc.returncode, proc.stderr, "File too large")


# ---------------------------------------------------------------- names and paths

def test_hostile_class_names_are_escaped(project, capsys):
    cfg = copy.deepcopy(project.cfg)
    cfg["class_names"] = ["<script>alert(1)</script>", "../../etc/passwd", "a/b\x07\u65e5\u672c"]
    code, msg = project.run(capsys, cfg)
    assert code in (0, 1), msg
    report = project.path / "out" / "report"
    pages = "".join(p.read_text() for p in report.glob("*.html"))
    assert "<script>alert(1)</script>" not in pages
    assert "&lt;script&gt;" in pages
    written = {p.resolve() for p in project.path.rglob("*")}
    assert all(str(p).startswith(str(project.path.resolve())) for p in written)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["classes"][2]["name"] == "a/b\x07\u65e5\u672c"


# ---------------------------------------------------------------- faults

def test_exception_in_one_chunk_names_it(project, capsys, small_problem):
    """A dataset whose reader fails on one sample: that chunk's class fails, named; others finish."""
    x, y = small_problem["x"], small_problem["y"]
    bad = int(np.flatnonzero(y == 1)[70])
    np.savez(project.path / "arrays.npz", x=x, y=y)
    (project.path / "flaky.py").write_text(
        "import numpy as np\nimport torch\n\nclass Flaky(torch.utils.data.Dataset):\n"
        "    def __init__(self, path, bad):\n        arrays = np.load(path)\n"
        "        self.x, self.targets, self.bad = arrays['x'], arrays['y'], bad\n"
        "    def __len__(self):\n        return len(self.targets)\n"
        "    def __getitem__(self, i):\n        if i == self.bad:\n"
        "            raise OSError(f'unreadable image {i}')\n"
        "        return torch.as_tensor(self.x[i]), int(self.targets[i])\n\n"
        "def build(path, bad):\n    return Flaky(path, bad)\n")
    cfg = copy.deepcopy(project.cfg)
    cfg["data"] = {"source": "factory", "factory": "flaky:build",
                   "kwargs": {"path": str(project.path / "arrays.npz"), "bad": bad}}
    code, msg = project.run(capsys, cfg)
    _expect(code, msg, "class 1", "rows 64..", f"unreadable image {bad}", exit_code=3)
    summary = json.loads((project.path / "out" / "report" / "summary.json").read_text())
    assert {e["class"]: e["status"] for e in summary["classes"]} == {0: "ok", 1: "failed", 2: "ok"}
    assert (project.path / "out" / "spray.zarr" / "classes" / "2" / "eigenvalues").exists()


# ---------------------------------------------------------------- fuzzing

_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5),
                    st.lists(st.integers(-2, 12), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["data", "model", "attribution", "cluster", "root"]),
       key=st.sampled_from(["source", "path", "factory", "weights", "composite", "target",
                            "batch_size", "chunk_size", "scheduler", "n_workers", "classes",
                            "output", "pipeline", "bogus"]),
       value=_values)
def test_config_loader_fuzz(small_problem, tmp_path_factory, section, key, value):
    from spray.config.run_config import validate_config
    from spray.errors import ConfigError

    raw = copy.deepcopy(small_problem["raw_config"])
    target = raw if section == "root" else raw.setdefault(section, {})
    if not isinstance(target, dict):
        return
    target[key] = value
    try:
        validate_config(raw, small_problem["root"])
    except ConfigError as err:
        assert str(err)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 40), d=st.integers(1, 12), dup=st.integers(0, 10),
       const=st.booleans(), seed=st.integers(0, 10_000))
def test_analysis_fuzz(n, d, dup, const, seed):
    from spray.analysis.analyze import analyze
    from spray.errors import DataError

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    if dup:
        features[: min(dup, n)] = features[0]
    if const:
        features[:, 0] = 3.0
    try:
        result = analyze(features, embed=False)
    except DataError:
        return
    ev = result.eigenvalues
    assert np.all(np.isfinite(ev))
    assert np.all(ev >= -1e-8) and np.all(ev <= 2 + 1e-8)
    assert np.all(np.diff(ev) >= -1e-9)
    assert len(result.labels) == n


@pytest.mark.parametrize("quiet", [False, True])
def test_abandoned_store_writes_print_no_traceback_after_the_error(quiet):
    """When a full disk fails several concurrent store writes, the first error is reported and
    the others end as futures nobody retrieves; asyncio would print each with a traceback."""
    code = ("import asyncio, gc\n"
            "from spray.cli.main import _quiet_abandoned_writes\n"
            + ("_quiet_abandoned_writes()\n" if quiet else "")
            + "loop = asyncio.new_event_loop()\n"
              "f = loop.create_future()\n"
              "try:\n"
              "    raise FileExistsError(17, 'File exists')\n"
              "except OSError as err:\n"
              "    f.set_exception(err)\n"
              "    del err\n"
              "del f\n"
              "gc.collect()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("never retrieved" in proc.stderr) is not quiet, proc.stderr
    assert ("Traceback" in proc.stderr) is not quiet, proc.stderr
