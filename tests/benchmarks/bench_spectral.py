"""Benchmark of the spectral analysis stage: spray against CoRelAy on the same features.

    # spray vs CoRelAy, full analysis (features -> eigenvalues, labels, t-SNE), d = 400
    python tests/benchmarks/bench_spectral.py compare --sizes 1000 5000 10000 20000
    # spectral part only (kNN -> eigenvalues, labels) at scale, with the recall of the kNN search
    python tests/benchmarks/bench_spectral.py scale --sizes 100000 1000000 --cases easy hard
    # Markdown tables from the JSON lines of earlier runs
    python tests/benchmarks/bench_spectral.py table tests/benchmarks/spectral-scale.jsonl

(with ``PYTHONPATH=.`` from the repository root, or spray installed; CoRelAy comes with the
``peers`` extra). Every (tool, n) runs in a fresh subprocess so that its peak memory is its own.
Per stage we record the wall time and the peak resident memory above the stage's start
(sampled every 5 ms). Results are appended as JSON lines to ``--out`` and printed as Markdown.

``scale`` cases: ``easy`` is the planted mixture below; ``hard`` is isotropic Gaussian noise in
``d = 400`` dimensions with one group of n/20 samples (5 000 at 100k) shifted by 0.5 in every
coordinate — no low-dimensional structure, the worst case for any approximate index. Each
(case, n) runs in a fresh process: *cold* is its first analysis (imports done, nothing
warmed up; compiled kernels come from numba's on-disk cache, filled once per machine), *warm*
the second one in the same process. *after warm-up* is the first analysis of a second fresh
process that ran a Dask worker's kNN warm-up first (``cluster.warm_up``,
:func:`spray.analysis.knn.warm_up`; its wall and CPU seconds are recorded too), i.e. a new
worker's first class. ``knn_identical``: the three runs found the same neighbours.
*eigenvalue error* is measured on a random subsample of
20 000 rows: the largest difference of the 32 eigenvalues between the kNN method used at full
size (forced on the subsample) and an exact kNN ranked in float64 (:func:`float64_knn`).

Features (``easy``, and ``compare``): a planted mixture — 8 groups in a 16-dimensional latent
space, mapped linearly to ``d = 400`` dimensions plus isotropic noise — so that cluster recovery
(adjusted Rand index against the planted groups) can be reported next to the timings. Embedding quality is the
fraction of each sample's 10 exact nearest neighbours (in the 400-d features) found among its
10 nearest neighbours in the 2-D map, on 1000 random samples.

What is compared (CoRelAy's documented SpRAy pipeline, its own defaults):
``SciPyPDist`` (dense n×n distances) → ``SparseKNN(n_neighbors=10)`` (argsort of every row) →
``SymmetricNormalLaplacian`` → ``EigenDecomposition(n_eigval=32)`` (eigsh ``which='LM'``) →
``KMeans`` on the eigenvectors → ``TSNEEmbedding`` (scikit-learn t-SNE on the features).
spray runs its ``spray-default`` preset (exact kNN, k = ⌈ln n⌉, eigsh ``'LA'``, k-means on the
first K row-normalized eigenvectors, openTSNE on the same kNN graph from the spectral layout).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------
# measurement helpers


class PeakRSS:
    """Samples the resident set size of this process in a background thread."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()


@contextmanager
def stage(record: dict, name: str, sampler: PeakRSS):
    """Time a stage (wall and CPU seconds of the process) and record its peak memory above the
    memory at its start (MiB)."""
    base = sampler.rss()
    sampler.peak = base
    t, cpu = time.perf_counter(), time.process_time()
    yield
    record[name] = {"seconds": round(time.perf_counter() - t, 3),
                    "cpu_seconds": round(time.process_time() - cpu, 3),
                    "peak_mib": round(max(sampler.peak, sampler.rss()) / 2 ** 20 - base / 2 ** 20, 1)}
    # progress on stderr: a long run that is stopped still shows how far it got
    print(f"stage {name}: {json.dumps(record[name])}", file=sys.stderr, flush=True)


def make_features(n: int, d: int = 400, seed: int = 0, latent: int = 16, groups: int = 8):
    """Planted mixture features ``(n, d)`` float32 and their group labels."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent)
    centres = rng.standard_normal((groups, latent)).astype(np.float32) * 1.2
    sizes = rng.dirichlet(np.full(groups, 3.0))
    g = rng.choice(groups, size=n, p=sizes)
    Z = centres[g] + rng.standard_normal((n, latent)).astype(np.float32)
    X = Z @ A + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return X.astype(np.float32), g


def make_hard_features(n: int, d: int = 400, seed: int = 0, shift: float = 0.5):
    """Isotropic noise ``(n, d)`` float32 with the first n/20 rows shifted by ``shift`` per
    coordinate, and the group labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    m = max(1, n // 20)
    X[:m] += np.float32(shift)
    g = np.zeros(n, dtype=np.int64)
    g[:m] = 1
    return X, g


def make_case(case: str, n: int, d: int = 400):
    return make_hard_features(n, d=d) if case == "hard" else make_features(n, d=d)


def query_sample(n: int, m: int = 1000, seed: int = 1) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(m, n), replace=False))


def exact_neighbours(X: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest neighbours (self excluded) of ``X[rows]`` among all rows of X."""
    out = []
    sq = np.einsum("ij,ij->i", X, X)
    for s in range(0, len(rows), 250):
        r = rows[s:s + 250]
        D = sq[r, None] - 2.0 * X[r] @ X.T + sq[None, :]
        D[np.arange(len(r)), r] = np.inf
        part = np.argpartition(D, k, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(D, part, axis=1), axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.vstack(out)


def knn_recall(indices: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> float:
    """Mean recall@k of neighbour lists ``indices[rows]`` against exact ``truth``."""
    k = truth.shape[1]
    hits = [len(set(indices[r][:k].tolist()) & set(t.tolist())) for r, t in zip(rows, truth)]
    return float(np.mean(hits) / k)


def embedding_quality(X: np.ndarray, Y: np.ndarray, rows: np.ndarray, k: int = 10) -> float:
    """Fraction of the k exact high-dimensional neighbours kept among the k 2-D neighbours."""
    from sklearn.neighbors import NearestNeighbors

    truth = exact_neighbours(X, rows, k)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(Y)
    _, ind = nn.kneighbors(Y[rows])
    ind2 = [[j for j in row if j != r][:k] for row, r in zip(ind, rows)]
    return float(np.mean([len(set(a) & set(b.tolist())) / k for a, b in zip(ind2, truth)]))


def ari(labels, truth) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


# ---------------------------------------------------------------------------------------------
# the contestants


def run_spray(X, truth, embed=True, pipeline="spray-default", overrides=None):
    """spray's stages one by one (as in :func:`spray.analysis.analyze.analyze`), measured."""
    from spray.analysis.clustering import cluster
    from spray.analysis.embedding import embed as tsne
    from spray.analysis.embedding import spectral_init
    from spray.analysis.knn import graph_from_neighbors, knn_neighbors, resolve_k
    from spray.analysis.spectral import smallest_eigenpairs, suggest_n_clusters
    from spray.config.presets import load_pipeline

    pipe = load_pipeline(pipeline, overrides=overrides)
    rec, info = {}, {}
    sampler = PeakRSS().start()
    n = X.shape[0]
    k = resolve_k(n, pipe["affinity"]["k"])
    with stage(rec, "knn", sampler):
        ind, dist, method = knn_neighbors(X, k, pipe["affinity"])
    info["knn_method"] = method
    info["knn_sha1"] = hashlib.sha1(np.ascontiguousarray(ind).tobytes()).hexdigest()[:16]
    rows = query_sample(n)
    info["knn_recall"] = round(knn_recall(ind, exact_neighbours(X, rows, k), rows), 4)
    with stage(rec, "graph", sampler):
        W = graph_from_neighbors(ind, dist, pipe["affinity"])
    del ind, dist
    with stage(rec, "eigen", sampler):
        lam, vec = smallest_eigenpairs(W, pipe["spectral"]["n_eigenvalues"],
                                       solver=pipe["spectral"]["solver"])
    K = suggest_n_clusters(lam, pipe["clustering"]["max_clusters"])
    with stage(rec, "cluster", sampler):
        labels = cluster(vec, K, pipe["clustering"], affinity=W)
    info.update(k=k, n_clusters=K, ari=round(ari(labels, truth), 3),
                eigenvalues=[round(float(x), 6) for x in lam[:10]])
    if embed:
        with stage(rec, "tsne", sampler):
            Z = tsne(W, X, pipe["embedding"], init=spectral_init(vec, W, lam))
        info["tsne_quality"] = round(embedding_quality(X, Z, query_sample(n)), 3)
    sampler.stop()
    info["peak_rss_mib"] = round(sampler.peak / 2 ** 20, 1)
    return rec, info


def run_corelay(X, truth, embed=True, n_clusters=None):
    """CoRelAy's SpRAy processors with their defaults, measured stage by stage."""
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.clustering import KMeans
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition, TSNEEmbedding
    from corelay.processor.laplacian import SymmetricNormalLaplacian

    rec, info = {}, {}
    sampler = PeakRSS().start()
    with stage(rec, "distance", sampler):
        D = SciPyPDist(metric="euclidean")(X)
    with stage(rec, "knn", sampler):
        A = SparseKNN(n_neighbors=10, symmetric=True)(D)
    del D
    with stage(rec, "laplacian", sampler):
        L = SymmetricNormalLaplacian()(A)
    with stage(rec, "eigen", sampler):
        lam, vec = EigenDecomposition(n_eigval=32)(L)
    K = n_clusters or 8
    with stage(rec, "cluster", sampler):
        labels = KMeans(n_clusters=K, kwargs={"n_init": 10, "random_state": 0})(vec)
    info.update(n_clusters=K, ari=round(ari(labels, truth), 3),
                eigenvalues=[round(float(x), 6) for x in np.sort(lam)[:10]],
                negative_mu=int(np.sum(lam > 1.5)))
    if embed:
        with stage(rec, "tsne", sampler):
            Z = TSNEEmbedding(kwargs={"random_state": 0})(X)
        info["tsne_quality"] = round(embedding_quality(X, Z, query_sample(X.shape[0])), 3)
    sampler.stop()
    info["peak_rss_mib"] = round(sampler.peak / 2 ** 20, 1)
    return rec, info


def float64_knn(X: np.ndarray, k: int, extra: int = 16):
    """Exact kNN ranked in float64 (self excluded, ties by index): scikit-learn's brute force
    proposes ``k + extra`` candidates (its float32 ``|x|² + |y|² − 2x·y`` misorders near ties),
    float64 distances of the differences rank them."""
    from spray.analysis.knn import exact_knn

    cand, _ = exact_knn(X, k + extra)
    cand = np.sort(cand, axis=1)
    X64 = X.astype(np.float64)
    dist = np.empty(cand.shape)
    for s in range(0, len(X), 1000):
        diff = X64[s:s + 1000, None, :] - X64[cand[s:s + 1000]]
        dist[s:s + 1000] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(cand, order, axis=1),
            np.take_along_axis(dist, order, axis=1).astype(np.float32))


def eigenvalue_error(X, method: str, overrides=None, m: int = 20000, seed: int = 2) -> float:
    """Largest eigenvalue difference on an ``m``-row subsample: ``method`` vs exact kNN ranked
    in float64 (:func:`float64_knn`)."""
    from spray.analysis.knn import graph_from_neighbors, knn_neighbors, resolve_k
    from spray.analysis.spectral import smallest_eigenpairs
    from spray.config.presets import load_pipeline

    pipe = load_pipeline("spray-default", overrides=overrides)
    rows = np.sort(np.random.default_rng(seed).choice(X.shape[0], min(m, X.shape[0]),
                                                      replace=False))
    Xs = np.ascontiguousarray(X[rows])
    k = resolve_k(len(rows), pipe["affinity"]["k"])
    search = {"exact-blocked": "exact", "pynndescent": "approximate"}.get(method)
    forced = dict(pipe["affinity"], approximate_above=0, search=search) if search else None
    lams = []
    for aff in (forced, None):
        if aff is None:
            ind, dist = float64_knn(Xs, k)
        else:
            ind, dist, _ = knn_neighbors(Xs, k, aff)
        W = graph_from_neighbors(ind, dist, pipe["affinity"])
        lams.append(smallest_eigenpairs(W, pipe["spectral"]["n_eigenvalues"],
                                        solver=pipe["spectral"]["solver"])[0])
    return float(np.max(np.abs(lams[0] - lams[1])))


def run_one(args):
    """Child process: one tool at one size; prints one JSON line."""
    from threadpoolctl import threadpool_info

    overrides = json.loads(args.overrides) if args.overrides else None
    if args.case:
        return run_scale_case(args, overrides)
    X, truth = make_features(args.n, d=args.d)
    if args.tool == "spray":
        import torch  # noqa: F401  (loaded in every pipeline worker; not part of the timing)

        rec, info = run_spray(X, truth, embed=not args.no_embed, overrides=overrides)
    else:
        rec, info = run_corelay(X, truth, embed=not args.no_embed, n_clusters=8)
    total = round(sum(v["seconds"] for v in rec.values()), 3)
    out = {"tool": args.tool, "n": args.n, "d": args.d, "stages": rec, "total_seconds": total,
           **info, "overrides": overrides,
           "blas_threads": sum(p.get("num_threads", 0) for p in threadpool_info())}
    print(json.dumps(out))


def cpu_seconds() -> float:
    """CPU seconds of this process so far (all its threads)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_after_warm_up(args, overrides):
    """Child process of ``scale``: a new worker's first analysis after the worker warm-up
    (:class:`spray.run.warm_up.KnnWarmUp` runs :func:`spray.analysis.knn.warm_up`)."""
    import torch  # noqa: F401  (imported by every pipeline worker before its first class)

    from spray.analysis.knn import warm_up
    from spray.config.presets import load_pipeline

    X, truth = make_case(args.case, args.n, d=args.d)
    affinity = load_pipeline("spray-default", overrides=overrides)["affinity"]
    t, cpu = time.perf_counter(), cpu_seconds()
    parts = warm_up(affinity)
    warm = {"seconds": round(time.perf_counter() - t, 3), "cpu_seconds": round(cpu_seconds() - cpu, 3),
            **{f"{k}_seconds": round(v, 3) for k, v in parts.items()},
            "load_average_before": round(os.getloadavg()[0], 2)}
    print(f"warm-up: {json.dumps(warm)}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    rec, info = run_spray(X, truth, embed=False, overrides=overrides)
    print(json.dumps({"warm_up": warm, "stages": rec, "knn_method": info["knn_method"],
                      "knn_sha1": info["knn_sha1"], "load_average_before": round(load, 2),
                      "total_seconds": round(sum(v["seconds"] for v in rec.values()), 3)}))


def run_scale_case(args, overrides):
    """Child process of ``scale``: the first (cold) and second (warm) analysis of one case."""
    import resource

    if args.after_warm_up:
        return run_after_warm_up(args, overrides)
    import torch  # noqa: F401  (imported by every pipeline worker before its first class)

    import spray.analysis.knn  # noqa: F401

    X, truth = make_case(args.case, args.n, d=args.d)
    runs = {}
    for name in ("cold",) if args.once else ("cold", "warm"):
        load = os.getloadavg()[0]
        rec, info = run_spray(X, truth, embed=False, overrides=overrides)
        runs[name] = {"stages": rec, "total_seconds": round(sum(v["seconds"] for v in rec.values()), 3),
                      "knn_method": info["knn_method"], "knn_sha1": info["knn_sha1"],
                      "load_average_before": round(load, 2)}
    err = None
    if not args.no_eigen_check:
        err = eigenvalue_error(X, info["knn_method"], overrides)
    last = runs["cold" if args.once else "warm"]
    out = {"tool": "spray", "case": args.case, "n": args.n, "d": args.d, **info,
           "stages": last["stages"], "total_seconds": last["total_seconds"],
           "cold_total_seconds": runs["cold"]["total_seconds"], "runs": runs,
           "eigenvalue_error_20k": err, "overrides": overrides,
           "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "features_mib": round(X.nbytes / 2 ** 20, 1), "load_average_after": os.getloadavg()[0]}
    print(json.dumps(out))


def child(tool, n, d, no_embed=False, overrides=None, timeout=7200, case=None,
          eigen_check=True, after_warm_up=False):
    cmd = [sys.executable, __file__, "one", "--tool", tool, "--n", str(n), "--d", str(d)]
    if no_embed:
        cmd.append("--no-embed")
    if case:
        cmd += ["--case", case] + ([] if eigen_check else ["--no-eigen-check"])
    if after_warm_up:
        cmd.append("--after-warm-up")
    if overrides:
        cmd += ["--overrides", json.dumps(overrides)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not line:
        return {"tool": tool, "n": n, "case": case, "error": (proc.stderr or proc.stdout)[-600:]}
    return json.loads(line[-1])


def add_warm_up_run(row: dict, warmed: dict) -> None:
    """Add a fresh process's warm-up and first analysis (:func:`run_after_warm_up`) to a
    ``scale`` row: ``runs["after_warm_up"]``, ``warm_up_seconds``, ``after_warm_up_total_seconds``."""
    if "error" in warmed:
        row["after_warm_up_error"] = warmed["error"]
        return
    row["runs"]["after_warm_up"] = warmed
    row["warm_up_seconds"] = warmed["warm_up"]["seconds"]
    row["warm_up_cpu_seconds"] = warmed["warm_up"]["cpu_seconds"]
    row["after_warm_up_total_seconds"] = warmed["total_seconds"]
    row["knn_identical"] = len({run["knn_sha1"] for run in row["runs"].values()}) == 1


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2 ** 30:.0f} GiB, "
            f"load average {load:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def compare_table(rows) -> str:
    by = {(r["tool"], r["n"]): r for r in rows}
    sizes = sorted({r["n"] for r in rows})
    head = ("| n | spray total s | CoRelAy total s | speed-up | spray kNN / eig / cluster / t-SNE s "
            "| CoRelAy dist+kNN / eig / cluster / t-SNE s | spray peak MiB | CoRelAy peak MiB "
            "| ARI spray / CoRelAy | t-SNE 10-NN kept spray / CoRelAy |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n in sizes:
        s, c = by.get(("spray", n)), by.get(("corelay", n))
        if not s or "error" in s:
            continue
        st = s["stages"]
        sp_stages = " / ".join(f"{st[x]['seconds']:.2f}" if x in st else "-"
                               for x in ("knn", "eigen", "cluster", "tsne"))
        if c and "error" not in c:
            ct = c["stages"]
            c_stages = (f"{ct['distance']['seconds'] + ct['knn']['seconds']:.2f} / "
                        + " / ".join(f"{ct[x]['seconds']:.2f}" if x in ct else "-"
                                     for x in ("eigen", "cluster", "tsne")))
            c_total, ratio = f"{c['total_seconds']:.1f}", f"{c['total_seconds'] / s['total_seconds']:.1f}×"
            c_peak = f"{max(v['peak_mib'] for v in ct.values()):.0f}"
            c_ari, c_q = c.get("ari", "-"), c.get("tsne_quality", "-")
        else:
            c_stages, c_total, ratio, c_peak, c_ari, c_q = ("n/a",) * 6
        s_peak = f"{max(v['peak_mib'] for v in st.values()):.0f}"
        lines.append(f"| {n} | {s['total_seconds']:.1f} | {c_total} | {ratio} | {sp_stages} | "
                     f"{c_stages} | {s_peak} | {c_peak} | {s.get('ari')} / {c_ari} | "
                     f"{s.get('tsne_quality', '-')} / {c_q} |")
    return "\n".join(lines)


def scale_table(rows) -> str:
    """Markdown table of ``scale`` rows (JSON lines of :func:`run_scale_case`)."""
    head = ("| case | n | kNN method | recall@k | eigenvalue error (20k) | warm s: kNN / graph / "
            "eigen / cluster | warm CPU s: kNN / graph / eigen / cluster "
            "| **warm total s** | **cold total s** | **after warm-up total s** "
            "| warm-up s (CPU s) | CPU s warm / cold / after warm-up "
            "| peak MiB above data "
            "| max RSS MiB | K / ARI | load avg |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        case = r.get("case", "easy")
        if "error" in r:
            lines.append(f"| {case} | {r['n']} | error: {r['error'][-120:]!r} |")
            continue
        st = r["stages"]
        parts = " / ".join(f"{st[x]['seconds']:.1f}" for x in ("knn", "graph", "eigen", "cluster"))
        cpu_parts = " / ".join(f"{st[x].get('cpu_seconds', float('nan')):.1f}"
                               for x in ("knn", "graph", "eigen", "cluster"))
        err = r.get("eigenvalue_error_20k")
        err = "-" if err is None else f"{err:.1e}"
        cold = r.get("cold_total_seconds")
        cold = "-" if cold is None else f"{cold:.1f}"
        load = r.get("runs", {}).get("warm", {}).get("load_average_before", "-")
        cpu = " / ".join(
            f"{sum(v.get('cpu_seconds', 0) for v in run['stages'].values()):.1f}"
            for run in (r.get("runs", {}).get(x) for x in ("warm", "cold", "after_warm_up"))
            if run) or "-"
        after = r.get("after_warm_up_total_seconds")
        after = "-" if after is None else f"{after:.1f}"
        warm_up = ("-" if r.get("warm_up_seconds") is None
                   else f"{r['warm_up_seconds']:.1f} ({r['warm_up_cpu_seconds']:.1f})")
        lines.append(f"| {case} | {r['n']} | {r['knn_method']} | {r['knn_recall']:.3f} | {err} | "
                     f"{parts} | {cpu_parts} | **{r['total_seconds']:.1f}** | **{cold}** | "
                     f"**{after}** | {warm_up} | {cpu} | "
                     f"{max(v['peak_mib'] for v in st.values()):.0f} | {r.get('max_rss_mib', '-')} | "
                     f"{r['n_clusters']} / {r['ari']} | {load} |")
    return "\n".join(lines)


def tables(path) -> str:
    """Markdown tables from a JSON-lines file of earlier ``compare`` / ``scale`` runs."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    scale = [r for r in rows if "case" in r or "knn_recall" in r]
    compare = [r for r in rows if r not in scale]
    out = []
    if compare:
        out.append(compare_table(compare))
    if scale:
        out.append(scale_table(scale))
    return "\n\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("compare", "scale"):
        p = sub.add_parser(name)
        p.add_argument("--sizes", type=int, nargs="+",
                       default=[1000, 5000, 10000, 20000] if name == "compare" else [100000])
        p.add_argument("--d", type=int, default=400)
        p.add_argument("--out", default=str(ROOT / "tests" / "benchmarks" / f"spectral-{name}.jsonl"))
        p.add_argument("--overrides", default=None, help="JSON pipeline overrides for spray")
        p.add_argument("--no-corelay", action="store_true")
        if name == "scale":
            p.add_argument("--cases", nargs="+", choices=["easy", "hard"], default=["easy", "hard"])
            p.add_argument("--no-eigen-check", action="store_true",
                           help="skip the eigenvalue error on the 20k subsample")
            p.add_argument("--no-warm-up-run", action="store_true",
                           help="skip the fresh process that warms up before its first analysis")
    tab = sub.add_parser("table")
    tab.add_argument("jsonl", help="JSON lines written by compare / scale (--out)")
    one = sub.add_parser("one")
    one.add_argument("--tool", choices=["spray", "corelay"], required=True)
    one.add_argument("--n", type=int, required=True)
    one.add_argument("--d", type=int, default=400)
    one.add_argument("--no-embed", action="store_true")
    one.add_argument("--overrides", default=None)
    one.add_argument("--case", choices=["easy", "hard"], default=None)
    one.add_argument("--no-eigen-check", action="store_true")
    one.add_argument("--once", action="store_true",
                     help="with --case: only the first (cold) analysis, e.g. for 1M samples")
    one.add_argument("--after-warm-up", action="store_true",
                     help="with --case: the worker warm-up, then one analysis")
    args = ap.parse_args(argv)
    if args.cmd == "one":
        return run_one(args)
    if args.cmd == "table":
        print(tables(args.jsonl))
        return None
    print(f"machine: {machine()}", flush=True)
    rows = []
    overrides = json.loads(args.overrides) if args.overrides else None
    if args.cmd == "scale":
        jobs = [("spray", n, case) for case in args.cases for n in args.sizes]
    else:
        tools = ["spray"] if args.no_corelay else ["spray", "corelay"]
        jobs = [(tool, n, None) for n in args.sizes for tool in tools]
    for tool, n, case in jobs:
        r = child(tool, n, args.d, no_embed=args.cmd == "scale", overrides=overrides,
                  case=case, eigen_check=not getattr(args, "no_eigen_check", False))
        if case and "error" not in r and not args.no_warm_up_run:
            add_warm_up_run(r, child(tool, n, args.d, no_embed=True, overrides=overrides,
                                     case=case, after_warm_up=True))
        r["machine"] = machine()
        rows.append(r)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)
    print(compare_table(rows) if args.cmd == "compare" else scale_table(rows))


if __name__ == "__main__":
    main()
