"""The sparse products of the eigensolver, counted on saved kNN graphs (independent of the load).

    # the kNN graphs of bench_spectral.py's features (hard and easy, 100k / 20k / 10k), once
    python tests/benchmarks/eigen_products.py save --out DIR --cases hard easy
    # one solve per graph: products, CPU seconds, eigenvalues (DIR/lam_<graph>_<label>.npy)
    python tests/benchmarks/eigen_products.py count DIR/W_hard_100000.npz --label new \\
        --json rows.jsonl [--solver chebyshev]

(with ``PYTHONPATH=.`` from the repository root). The products are counted in
``_RowBlocks.addmm`` (columns of float32 and float64 sparse × dense products) and in the final
float64 Rayleigh–Ritz (scipy); *cost* is float32 columns + 3 × float64 columns, a float64
column costing ~3× a float32 one at 100k nodes. Comparing two versions of the solver: run
``count`` with each checkout's ``PYTHONPATH`` on the same graphs, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))


def save(out: Path, cases, sizes) -> None:
    """The graphs ``smallest_eigenpairs`` gets in bench_spectral.py's ``scale`` runs."""
    from bench_spectral import make_case

    from spray.analysis.knn import graph_from_neighbors, knn_neighbors, resolve_k
    from spray.config.presets import load_pipeline

    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("spray-default")
    for case in cases:
        for n in sizes:
            X, _ = make_case(case, n)
            k = resolve_k(n, pipe["affinity"]["k"])
            ind, dist, method = knn_neighbors(X, k, pipe["affinity"])
            W = sp.csr_matrix(graph_from_neighbors(ind, dist, pipe["affinity"]))
            sp.save_npz(out / f"W_{case}_{n}.npz", W)
            print(f"{case} {n}: {method}, k {k}, {W.nnz} non-zeros", flush=True)


def count(graph: Path, label: str, solver: str, m: int = 32) -> dict:
    """One solve of ``graph`` with the products counted; the eigenvalues are saved next to it."""
    import torch

    import spray.analysis.spectral as spectral

    columns = {"float32": 0, "float64": 0, "rayleigh_ritz": 0}
    addmm, rayleigh_ritz = spectral._RowBlocks.addmm, spectral._rayleigh_ritz

    def counted_addmm(self, x0, x1, *args, **kwargs):
        columns["float32" if self.dtype == torch.float32 else "float64"] += x1.shape[1]
        return addmm(self, x0, x1, *args, **kwargs)

    def counted_rayleigh_ritz(M, V):
        columns["rayleigh_ritz"] += V.shape[1]
        return rayleigh_ritz(M, V)

    spectral._RowBlocks.addmm = counted_addmm
    spectral._rayleigh_ritz = counted_rayleigh_ritz
    W = sp.load_npz(graph)
    load = os.getloadavg()[0]
    cpu, wall = time.process_time(), time.perf_counter()
    lam, vec = spectral.smallest_eigenpairs(W, m, solver=solver)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    np.save(graph.parent / f"lam_{graph.stem}_{solver}_{label}.npy", lam)
    residual = np.linalg.norm(spectral.laplacian_sym(W) @ vec - vec * lam, axis=0).max()
    return {"graph": graph.stem, "solver": solver, "label": label,
            "cost": columns["float32"] + 3 * (columns["float64"] + columns["rayleigh_ritz"]),
            **columns, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "residual": float(residual), "load_average": round(load, 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", nargs="+", default=["hard", "easy"])
    p.add_argument("--sizes", nargs="+", type=int, default=[100000, 20000, 10000])
    p = sub.add_parser("count")
    p.add_argument("graph", type=Path)
    p.add_argument("--label", default="run")
    p.add_argument("--solver", default="auto")
    p.add_argument("--json", type=Path, help="append the row to this JSON-lines file")
    args = parser.parse_args(argv)
    if args.command == "save":
        return save(args.out, args.cases, args.sizes)
    row = count(args.graph, args.label, args.solver)
    print(json.dumps(row))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
