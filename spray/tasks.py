"""The two kinds of Dask task: an LRP chunk and the analysis of one class.

Both run on a worker, open the dataset and the model themselves (once per worker process, see
:func:`spray.sources.open_source` and :func:`spray.models.load_model`) and write their results
straight into the Zarr store, so nothing but small status dicts travel through the scheduler.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from spray.errors import DataError, SprayError
from spray.models import load_model
from spray.sources import open_source
from spray.store import open_class, write_array


def _set_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _targets(attr_cfg: dict, c: int, logits: torch.Tensor) -> torch.Tensor:
    target = attr_cfg.get("target", "label")
    n, n_out = logits.shape
    if target == "label":
        return torch.full((n,), c, dtype=torch.long)
    if target == "prediction":
        return logits.argmax(dim=1)
    if not 0 <= int(target) < n_out:
        raise DataError(f"key 'attribution.target': class {target} out of range "
                        f"(the model has {n_out} outputs)")
    return torch.full((n,), int(target), dtype=torch.long)


def relevance_for(model, x: np.ndarray, c: int, attr_cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Relevance maps ``(n, C, H, W)`` and logits ``(n, K)`` of a batch of samples."""
    from spray import lrp

    inputs = torch.as_tensor(x)
    dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32
    inputs = inputs.to(dtype)
    maps, logits = [], []
    bs = int(attr_cfg.get("batch_size", 256))
    for start in range(0, len(inputs), bs):
        batch = inputs[start:start + bs]
        out = model(batch).detach() if len(batch) else batch.new_zeros((0, 1))
        targets = _targets(attr_cfg, c, out)
        rel = lrp.attribute(model, batch, targets, composite=attr_cfg.get("composite",
                            "epsilon-plus-flat"), **attr_cfg.get("params", {}))
        maps.append(rel.detach().float().numpy())
        logits.append(out.float().numpy())
    return np.concatenate(maps), np.concatenate(logits)


def lrp_chunk(run_dir: str, c: int, chunk: int, data_cfg: dict, model_cfg: dict,
              attr_cfg: dict, base_dir: str, threads: int = 1) -> dict:
    """Compute the relevance maps of rows ``chunk`` of class ``c`` and write them to the store."""
    t0 = time.perf_counter()
    _set_threads(threads)
    cg = open_class(run_dir, c, mode="a")
    size = int(cg.attrs["chunk_size"])
    start, stop = chunk * size, min((chunk + 1) * size, int(cg.attrs["n_samples"]))
    indices = cg["index"][start:stop]
    try:
        x = open_source(data_cfg).load(indices)
        model = load_model(model_cfg, base_dir)
        maps, logits = relevance_for(model, x, c, attr_cfg)
    except SprayError:
        raise
    except Exception as err:  # noqa: BLE001 - name the chunk that failed
        raise DataError(f"class {c}, rows {start}..{stop - 1} (dataset indices "
                        f"{int(indices[0])}..{int(indices[-1])}): LRP failed: "
                        f"{type(err).__name__}: {err}") from err
    cg["relevance"][start:stop] = maps.sum(axis=1)
    if "relevance_full" in cg:
        cg["relevance_full"][start:stop] = maps
    cg["logits"][start:stop] = logits
    cg["prediction"][start:stop] = logits.argmax(axis=1)
    cg["done"][chunk] = True
    return {"class": c, "chunk": chunk, "rows": stop - start, "seconds": time.perf_counter() - t0}


def _write_cluster_views(cg, maps: np.ndarray, inputs: np.ndarray, labels: np.ndarray,
                         per_cluster: int = 8) -> None:
    """Store what the report shows: mean relevance per cluster and a few example inputs."""
    ids = np.unique(labels)
    write_array(cg, "cluster_mean_relevance",
                np.stack([maps[labels == i].mean(axis=0) for i in ids]).astype(np.float32))
    rows = np.concatenate([np.flatnonzero(labels == i)[:per_cluster] for i in ids])
    write_array(cg, "example_rows", rows.astype(np.int64))
    write_array(cg, "example_inputs", inputs[rows].astype(np.float32))


def analyze_class(run_dir: str, c: int, pipeline: dict, data_cfg: dict, _deps=None,
                  threads: int = 1) -> dict:
    """Preprocess, analyse and score one class; write everything into its store group."""
    from spray.analysis import analyze
    from spray.flags import clever_hans_score
    from spray.preprocess import nonfinite_rows, preprocess

    t0 = time.perf_counter()
    _set_threads(threads)
    cg = open_class(run_dir, c, mode="a")
    maps = cg["relevance"][:]
    indices = cg["index"][:]
    bad = nonfinite_rows(maps)
    if len(bad):
        shown = ", ".join(str(int(indices[i])) for i in bad[:10])
        raise DataError(f"class {c}: relevance maps of {len(bad)} sample(s) hold NaN/Inf "
                        f"(dataset indices {shown}{' ...' if len(bad) > 10 else ''})")
    features = preprocess(maps, pipeline["preprocess"])
    write_array(cg, "features", features)
    inputs = open_source(data_cfg).load(indices)
    input_features = preprocess(inputs, pipeline["preprocess"])
    write_array(cg, "input_features", input_features)
    result = analyze(features, pipeline=pipeline, embed=pipeline["embedding"]["method"] != "none")
    write_array(cg, "eigenvalues", result.eigenvalues)
    write_array(cg, "eigengaps", result.eigengaps)
    write_array(cg, "eigenvectors", result.eigenvectors.astype(np.float32))
    write_array(cg, "labels", result.labels.astype(np.int64))
    if result.embedding is not None:
        write_array(cg, "tsne", result.embedding.astype(np.float32))
    verdict = clever_hans_score(result, input_features, pipeline)
    _write_cluster_views(cg, maps, inputs, result.labels)
    info = {"n_clusters": int(result.n_clusters), "k": int(result.k),
            "warnings": list(result.warnings), "flags": verdict,
            "seconds": time.perf_counter() - t0}
    cg.attrs["analysis"] = info
    return {"class": c, **info}
