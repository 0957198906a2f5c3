"""The two kinds of Dask task: an LRP chunk and the analysis of one class.

Both run on a worker, open the dataset and the model themselves (once per worker process, see
:func:`spray.data.sources.open_source` and :func:`spray.data.models.load_model`) and write their results
straight into the Zarr store, so nothing but small status dicts travel through the scheduler.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

from spray.data.models import load_model
from spray.data.sources import open_source, samples_digest
from spray.errors import DataError, SprayError, StoreError
from spray.store import class_samples_hash, open_class, write_array, write_health

log = logging.getLogger(__name__)

# scikit-learn says it falls back to n_jobs=1 in daemonic Dask workers; that is intended here
# (one Dask thread per core), so do not repeat it for every class.
warnings.filterwarnings("ignore", message="Inside a Dask worker with daemon=True")


def torch_threads_for(runtime) -> int:
    """Intra-op threads for a task on this worker.

    ``runtime`` is an int, or a dict with ``torch_threads`` (an int or ``"auto"``) and
    ``host_threads`` (Dask threads per worker host, from the scheduler). ``auto`` divides the
    cores this process may use among the Dask threads on its host, so workers sharing a machine
    do not oversubscribe it.
    """
    if not isinstance(runtime, dict):
        return max(1, int(runtime))
    spec = runtime.get("torch_threads", "auto")
    if spec != "auto":
        return max(1, int(spec))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    host_threads = None
    try:
        from distributed import get_worker

        worker = get_worker()
        host = urlsplit(worker.address).hostname
        host_threads = (runtime.get("host_threads") or {}).get(host) or worker.state.nthreads
    except (ImportError, ValueError, AttributeError):
        pass
    return max(1, cores // max(1, int(host_threads or 1)))


def _set_threads(runtime) -> None:
    n = torch_threads_for(runtime)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _device(runtime) -> torch.device:
    want = runtime.get("device", "cpu") if isinstance(runtime, dict) else "cpu"
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise DataError("key 'cluster.device': 'cuda' requested but this worker has no CUDA "
                        "device; start GPU workers with '--resources GPU=1' and set "
                        "'cluster.lrp_resources: {GPU: 1}'")
    return torch.device(want)


def _target_spec(attr_cfg: dict, c: int):
    target = attr_cfg.get("target", "label")
    if target == "label":
        return int(c)
    if target == "prediction":
        return "prediction"
    return int(target)


def relevance_for(model, x: np.ndarray, c: int, attr_cfg: dict,
                  device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Relevance maps ``(n, C, H, W)`` and logits ``(n, K)`` of a batch of samples.

    One forward and one modified backward pass per batch of ``attribution.batch_size``; the
    logits come from the same forward pass.
    """
    from spray import lrp

    inputs = torch.as_tensor(x)
    if device is not None and device.type != "cpu":
        inputs = inputs.to(device)
    target = _target_spec(attr_cfg, c)
    maps, logits = [], []
    bs = int(attr_cfg.get("batch_size", 256))
    for start in range(0, len(inputs), bs):
        batch = inputs[start:start + bs]
        rel, out = lrp.attribute(model, batch, target,
                                 composite=attr_cfg.get("composite", "epsilon-plus-flat"),
                                 return_logits=True, **attr_cfg.get("params", {}))
        maps.append(rel.detach().float().cpu().numpy())
        logits.append(out.detach().float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(logits)


def explained_logits(logits: np.ndarray, c: int, attr_cfg: dict) -> np.ndarray:
    """The logit each map explains (the relevance put in at the output), per sample."""
    target = _target_spec(attr_cfg, c)
    column = logits.argmax(axis=1) if target == "prediction" else np.full(len(logits), target)
    return logits[np.arange(len(logits)), column]


def chunk_rows(cg, chunk: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of chunk ``chunk`` of a class group."""
    size = int(cg.attrs["chunk_size"])
    return chunk * size, min((chunk + 1) * size, int(cg.attrs["n_samples"]))


def _where(c: int, start: int, stop: int, indices: np.ndarray) -> str:
    span = (f"dataset indices {int(indices[0])}..{int(indices[-1])}" if len(indices)
            else "no samples")
    return f"class {c}, rows {start}..{stop - 1} ({span})"


def _check_finite_inputs(x: np.ndarray, indices: np.ndarray) -> None:
    """Refuse samples holding NaN/Inf, naming their dataset indices."""
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        shown = ", ".join(str(int(indices[i])) for i in bad[:10])
        raise DataError(f"input samples hold NaN or Inf: dataset indices {shown}"
                        f"{' ...' if len(bad) > 10 else ''}")


def _read_chunk(data_cfg: dict, base_dir: str, indices: np.ndarray) -> tuple[np.ndarray, bytes]:
    """The samples of a chunk as the model sees them, and their hash (one pass, as read)."""
    x = open_source(data_cfg, base_dir).load(indices)
    return x, samples_digest(x, indices)


class DeterministicError(Exception):
    """A data, config or model error inside a task: the same on every retry."""


def lrp_chunk(run_dir: str, c: int, chunk: int, data_cfg: dict, model_cfg: dict,
              attr_cfg: dict, base_dir: str, runtime=1) -> dict:
    """:func:`compute_chunk`; a data, config or model error (the same on every retry) is
    returned as ``{"error": message}`` instead of raised, so Dask neither retries it nor logs
    a traceback on the worker. Other errors (a lost file system, a killed worker) are raised and
    retried."""
    try:
        return compute_chunk(run_dir, c, chunk, data_cfg, model_cfg, attr_cfg, base_dir, runtime)
    except DeterministicError as err:
        return {"class": c, "chunk": chunk, "error": str(err.__cause__ or err),
                "error_type": type(err.__cause__ or err).__name__}


def compute_chunk(run_dir: str, c: int, chunk: int, data_cfg: dict, model_cfg: dict,
                  attr_cfg: dict, base_dir: str, runtime=1) -> dict:
    """Compute the relevance maps of rows ``chunk`` of class ``c`` and write them to the store.

    The rows of a chunk are exactly one Zarr chunk of every array, written whole and only then
    marked in ``done``: a task killed halfway leaves its chunk unmarked and a retry (or a rerun)
    rewrites it completely. The task hashes the samples it reads and stores the hash with the
    chunk; a chunk already marked is read and hashed again and computed again only when its
    samples changed.
    """
    t0 = time.perf_counter()
    cg = open_class(run_dir, c, mode="a")
    start, stop = chunk_rows(cg, chunk)
    indices = cg["index"][start:stop]
    try:
        _set_threads(runtime)
        x, digest = _read_chunk(data_cfg, base_dir, indices)
        stored = bytes(np.asarray(cg["sample_hash"][chunk], dtype=np.uint8))
        if bool(cg["done"][chunk]) and stored == digest:
            return {"class": c, "chunk": chunk, "rows": 0, "seconds": time.perf_counter() - t0,
                    "reused": True}
        device = _device(runtime)
        _check_finite_inputs(x, indices)
        model = load_model(model_cfg, base_dir)
        if device.type != "cpu":
            model = model.to(device)
        t1 = time.perf_counter()
        maps, logits = relevance_for(model, x, c, attr_cfg, device)
        t_lrp = time.perf_counter() - t1
        from spray.lrp.health import relevance_health

        health = relevance_health(maps, explained_logits(logits, c, attr_cfg))
    except SprayError as err:
        named = type(err)(f"{_where(c, start, stop, indices)}: {err}")
        raise DeterministicError(str(named)) from named
    except Exception as err:  # noqa: BLE001 - name the chunk that failed
        raise DataError(f"{_where(c, start, stop, indices)}: LRP failed: "
                        f"{type(err).__name__}: {err}") from err
    cg["done"][chunk] = False  # samples changed: unmark before rewriting
    cg["relevance"][start:stop] = maps.sum(axis=1)
    if "relevance_full" in cg:
        cg["relevance_full"][start:stop] = maps
    cg["logits"][start:stop] = logits
    cg["prediction"][start:stop] = logits.argmax(axis=1)
    write_health(cg, start, stop, health)
    cg["sample_hash"][chunk] = np.frombuffer(digest, dtype=np.uint8)
    cg["done"][chunk] = True
    return {"class": c, "chunk": chunk, "rows": stop - start, "lrp_seconds": t_lrp,
            "seconds": time.perf_counter() - t0, "t_end": time.time(),
            "slurm_job": os.environ.get("SLURM_JOB_ID")}


def _write_cluster_views(cg, source, indices: np.ndarray, labels: np.ndarray,
                         ids=None, per_cluster: int = 8) -> None:
    """Store what the report shows: mean relevance per cluster and a few example inputs.

    ``ids``: the clusters in the order the report lists them (the verdict's), one mean row
    each, a cluster left without members (they all joined a suspect) a row of zeros; without
    them, the labels present. The means are accumulated chunk by chunk, and only the example
    samples are loaded.
    """
    ids = np.unique(labels) if ids is None or not len(ids) else np.asarray(ids)
    rel = cg["relevance"]
    sums = np.zeros((len(ids),) + tuple(rel.shape[1:]), dtype=np.float64)
    counts = np.array([(labels == i).sum() for i in ids], dtype=np.float64)
    step = int(cg.attrs.get("chunk_size", 4096))
    for start in range(0, len(labels), step):
        maps = rel[start:start + step]
        lab = labels[start:start + step]
        for j, i in enumerate(ids):
            sel = lab == i
            if sel.any():
                sums[j] += maps[sel].sum(axis=0, dtype=np.float64)
    means = sums / np.maximum(counts, 1).reshape((-1,) + (1,) * (sums.ndim - 1))
    write_array(cg, "cluster_mean_relevance", means.astype(np.float32))
    rows = np.concatenate([np.flatnonzero(labels == i)[:per_cluster] for i in ids])
    write_array(cg, "example_rows", rows.astype(np.int64))
    write_array(cg, "example_inputs", source.load_display(indices[rows]).astype(np.float32))


def class_features(cg, c: int, source, params: dict,
                   edges: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Preprocessed relevance and raw-input features of a class, read chunk by chunk, and with
    ``edges`` the preprocessed edge energy of the inputs
    (:func:`~spray.analysis.preprocess.edge_energy`; else None).

    Preprocessing works row by row, so the result equals preprocessing the whole class at once
    while memory holds one chunk of maps and inputs (plus the small ``(n, d)`` features).
    """
    from spray.analysis.preprocess import edge_energy, nonfinite_rows, preprocess

    indices = cg["index"][:]
    rel = cg["relevance"]
    step = int(cg.attrs.get("chunk_size", 4096))
    feats, in_feats, edge_feats, bad = [], [], [], []
    for start in range(0, len(indices), step):
        maps = rel[start:start + step]
        rows = nonfinite_rows(maps)
        if len(rows):
            bad.extend(int(indices[start + r]) for r in rows)
            continue
        if bad:
            continue
        feats.append(preprocess(maps, params))
        inputs = source.load_display(indices[start:start + step])
        in_feats.append(preprocess(inputs, params))
        if edges:
            edge_feats.append(preprocess(edge_energy(inputs), params))
    if bad:
        shown = ", ".join(str(i) for i in bad[:10])
        raise DataError(f"class {c}: relevance maps of {len(bad)} sample(s) hold NaN/Inf "
                        f"(dataset indices {shown}{' ...' if len(bad) > 10 else ''})")
    return (np.concatenate(feats), np.concatenate(in_feats),
            np.concatenate(edge_feats) if edges else None)


def class_patterns(source, indices: np.ndarray, preprocess: dict, chunk: int, relevance=None):
    """The raw inputs of a class for the members by their pattern
    (:class:`~spray.verdict.patterns.InputPatterns`): position ``i`` of the class is the
    dataset sample ``indices[i]``, read from ``source`` before normalization, ``chunk`` at a
    time; ``relevance`` (the class's stored ``(n, H, W)`` maps) is read by the same rows."""
    from spray.verdict.patterns import InputPatterns

    maps = None if relevance is None else (lambda rows: _read_rows(relevance, rows))
    return InputPatterns.for_pipeline(lambda rows: source.load_display(indices[rows]),
                                      len(indices), preprocess, chunk, maps)


def _read_rows(array, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` of a Zarr array: one slice for consecutive rows, else by coordinates."""
    from spray.verdict.patterns import consecutive

    rows = np.asarray(rows)
    if consecutive(rows):
        return np.asarray(array[int(rows[0]):int(rows[-1]) + 1])
    return np.asarray(array.get_orthogonal_selection((rows,)))


def pipeline_hash(pipeline: dict) -> str:
    """Hash of an analysis pipeline: a class analysed with the same one need not be redone.

    The ``health`` limits are read by the gate only and do not enter the hash. With
    ``flags.false_flag_rate`` the threshold comes from the clean-score reference, so its
    digest enters the hash (a resume after a new reference analyses the classes again)."""
    from spray.config.run_config import json_hash
    from spray.verdict.calibration import reference_digest

    key = {k: v for k, v in pipeline.items() if k != "health"}
    if (pipeline.get("flags") or {}).get("false_flag_rate") is not None:
        key["clean_scores"] = reference_digest()
    return json_hash(key)


#: the code that decides a class's analysis and verdict, relative to the spray package: a stored
#: analysis written by other code (another rule, before a new result key) is analysed again
ANALYSIS_CODE = ("analysis", "verdict", "run/tasks.py")


def code_digest(root: Path, parts=ANALYSIS_CODE) -> str:
    """16 hex digits of the SHA-256 over the path and bytes of every ``.py`` and ``.json`` file
    below ``root / part`` (a folder, recursively, or one file), in sorted order."""
    h = hashlib.sha256()
    for part in parts:
        top = root / part
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*") if p.is_file() and p.suffix in (".py", ".json"))
        for path in files:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def analysis_code() -> str:
    """:func:`code_digest` of the installed spray's analysis and verdict code (once a process)."""
    import spray

    return code_digest(Path(spray.__file__).parent)


def analysis_current(previous: dict, pipeline: dict) -> bool:
    """A stored analysis (a class's ``analysis`` attribute) was made with this pipeline by this
    analysis and verdict code; one without a code digest (an older spray) is not."""
    return (previous.get("pipeline_hash") == pipeline_hash(pipeline)
            and previous.get("code") == analysis_code())


def analyze_class(run_dir: str, c: int, pipeline: dict, data_cfg: dict, _deps=None,
                  runtime=1, model_cfg: dict | None = None, attr_cfg: dict | None = None
                  ) -> dict:
    """:func:`analyze_stored_class` once the class's LRP chunks (``_deps``) are all written.

    A chunk that failed leaves the class unanalysed (``{"error": ..., "dependency": True}``);
    a data error of the analysis itself is returned as ``{"error": message}`` (not retried).
    ``model_cfg`` and ``attr_cfg``: the run's model and attribution sections, for the
    transplant test (``flags.transplant_pairs``; None: no test).
    """
    failed = [d for d in (_deps or []) if isinstance(d, dict) and d.get("error")]
    if failed:
        return {"class": c, "error": failed[0]["error"], "dependency": True}
    try:
        return analyze_stored_class(run_dir, c, pipeline, data_cfg, runtime, model_cfg,
                                    attr_cfg)
    except SprayError as err:
        return {"class": c, "error": str(err), "error_type": type(err).__name__}


#: the analysis arrays a kept analysis must still be able to read (a damaged one is redone)
ANALYSIS_ARRAYS = ("eigenvalues", "eigengaps", "eigenvectors", "labels")


def model_test(c: int, pipeline: dict, data_cfg: dict, model_cfg: dict | None,
               attr_cfg: dict | None, source, indices: np.ndarray, relevance, runtime=1):
    """What the transplant test of class ``c`` needs (:class:`spray.verdict.transplant.ModelTest`):
    the model, the class's inputs and maps by row, and ``4 × transplant_pairs`` samples of the
    other classes drawn at random (seeded by ``flags.seed`` and the class). None when the test
    is off, the run has no model (precomputed attributions) or its maps do not explain the
    label's logit (``attribution.target``: the test counts turns to the class's output).
    Called by the score only for a class with a suspect (or, with ``transplant_reach``, a
    candidate within reach below the threshold); on the run's device when this worker
    has it, else on the CPU (a few thousand forward passes)."""
    from spray.verdict.transplant import ModelTest, target_rows

    flags = pipeline.get("flags") or {}
    pairs = int(flags.get("transplant_pairs") or 0)
    if not pairs or model_cfg is None:
        return None
    if (attr_cfg or {}).get("target", "label") != "label":
        log.warning("class %d: no transplant test (attribution.target is not 'label')", c)
        return None
    model = load_model(model_cfg, data_cfg.get("base_dir"))
    try:
        device = _device(runtime)
    except DataError:   # a GPU run's analysis on a worker without one: the CPU suffices
        device = torch.device("cpu")
    model = model.to(device) if device.type != "cpu" else model

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(x).to(device)).argmax(1).cpu().numpy()

    pick = target_rows(source.labels(), c, pairs, int(flags.get("seed") or 0))
    return ModelTest(predict, lambda rows: source.load(indices[rows]),
                     lambda rows: _read_rows(relevance, rows), source.load(pick), c)


def _analysis_readable(cg) -> bool:
    """The stored analysis arrays exist and decode (a truncated chunk means: analyse again)."""
    try:
        for name in ANALYSIS_ARRAYS:
            np.asarray(cg[name][...])
    except Exception:  # noqa: BLE001 - missing, truncated or undecodable
        return False
    return True


def analyze_stored_class(run_dir: str, c: int, pipeline: dict, data_cfg: dict,
                         runtime=1, model_cfg: dict | None = None,
                         attr_cfg: dict | None = None) -> dict:
    """Preprocess, analyse and score one class; write everything into its store group.

    Reads the class's relevance maps and inputs one chunk at a time; the analysis itself works
    on the ``(n, d)`` feature matrix. With ``flags.transplant_pairs`` and a model the
    suspects get the transplant test (:func:`model_test`).
    """
    from spray.analysis.analyze import analyze
    from spray.verdict.score import clever_hans_score

    t0 = time.perf_counter()
    _set_threads(runtime)
    cg = open_class(run_dir, c, mode="a")
    samples = class_samples_hash(cg)
    previous = cg.attrs.get("analysis") or {}
    if (analysis_current(previous, pipeline) and previous.get("samples_hash") == samples
            and _analysis_readable(cg)):
        return {"class": c, **previous, "reused": True}  # same maps, pipeline and code: keep it
    indices = cg["index"][:]
    source = open_source(data_cfg)
    edges = bool((pipeline.get("flags") or {}).get("edge_randomness_weight"))
    features, input_features, edge_features = class_features(cg, c, source,
                                                             pipeline["preprocess"], edges)
    write_array(cg, "features", features)
    write_array(cg, "input_features", input_features)
    result = analyze(features, pipeline=pipeline, embed=pipeline["embedding"]["method"] != "none")
    write_array(cg, "eigenvalues", result.eigenvalues)
    write_array(cg, "eigengaps", result.eigengaps)
    write_array(cg, "eigenvectors", result.eigenvectors.astype(np.float32))
    if result.embedding is not None:
        write_array(cg, "tsne", result.embedding.astype(np.float32))
    patterns = class_patterns(source, indices, pipeline["preprocess"],
                              int(cg.attrs.get("chunk_size", 4096)), cg["relevance"])
    verdict = clever_hans_score(result, input_features, pipeline, features=features,
                                edge_features=edge_features, patterns=patterns,
                                model_test=functools.partial(
                                    model_test, c, pipeline, data_cfg, model_cfg, attr_cfg,
                                    source, indices, cg["relevance"], runtime))
    # the analysis' clusters, with any suspect half the score split off (verdict["splits"])
    labels = np.asarray(verdict.pop("labels"), dtype=np.int64)
    write_array(cg, "labels", labels)
    _write_cluster_views(cg, source, indices, labels, [c["id"] for c in verdict["clusters"]])
    info = {"n_clusters": int(result.n_clusters), "k": int(result.k),
            "pipeline_hash": pipeline_hash(pipeline), "code": analysis_code(),
            "samples_hash": samples,
            "warnings": list(result.warnings), "flags": verdict,
            "seconds": time.perf_counter() - t0}
    cg.attrs["analysis"] = info
    return {"class": c, **info, "slurm_job": os.environ.get("SLURM_JOB_ID")}


def precomputed_chunk(run_dir: str, c: int, chunk: int, data_cfg: dict, model_cfg, attr_cfg: dict,
                      base_dir: str, runtime=None) -> dict:
    """Fill rows ``chunk`` of class ``c`` from the attribution file (stands in for an LRP task)."""
    from spray.data.precomputed import class_rows, open_attributions

    t0 = time.perf_counter()
    cg = open_class(run_dir, c, mode="a")
    size = int(cg.attrs["chunk_size"])
    start, stop = chunk * size, min((chunk + 1) * size, int(cg.attrs["n_samples"]))
    attr = open_attributions(attr_cfg["precomputed"])
    try:
        labels = None if attr.has_labels() else open_source(data_cfg).labels()
        rows = class_rows(attr, c, labels)[start:stop]
        expected = cg["index"][start:stop]
        if len(rows) != stop - start or not np.array_equal(attr.index()[rows], expected):
            raise StoreError(f"{attr.path} changed since the store was made (class {c}, rows "
                             f"{start}..{stop - 1} no longer match); rerun with --overwrite")
        maps = attr.maps(rows)
        n_outputs = int(cg["logits"].shape[1])
        logits, prediction = attr.logits(rows, n_outputs)
    finally:
        attr.close()
    cg["relevance"][start:stop] = maps.sum(axis=1)
    if "relevance_full" in cg:
        cg["relevance_full"][start:stop] = maps
    cg["logits"][start:stop] = logits
    cg["prediction"][start:stop] = prediction
    cg["done"][chunk] = True
    return {"class": c, "chunk": chunk, "rows": stop - start, "seconds": time.perf_counter() - t0}
