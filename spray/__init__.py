"""spray: Spectral Relevance Analysis at dataset scale.

The stages of the data flow live in modules named after them:
``sources`` (datasets and class partitions) → ``models`` → ``lrp`` (relevance maps) →
``store`` (Zarr) → ``preprocess`` → ``affinity`` (kNN graph) → ``spectral`` (L_sym eigenpairs,
eigengaps) → ``cluster`` → ``embedding`` (t-SNE) → ``flags`` (Clever-Hans score) → ``report`` →
``export`` (ViRelAy); ``graph`` builds the Dask task graph, ``cli`` the ``spray`` command.
"""

__version__ = "0.1.0"


def analyze(features, pipeline="spray-default", embed=True, **overrides):
    """Run the SpRAy analysis on an ``(n, d)`` feature matrix (see :mod:`spray.analysis`)."""
    from spray.analysis import analyze as _analyze

    return _analyze(features, pipeline=pipeline, embed=embed, **overrides)
