"""spray: Spectral Relevance Analysis at dataset scale.

The subpackages follow the data flow, and each imports only from those to its left:

``config`` (run config, analysis presets) → ``data`` (sources, class partitions, models,
precomputed attributions) / ``lrp`` (relevance maps) / ``analysis`` (preprocess → kNN graph →
spectral → clustering → embedding) → ``verdict`` (Clever-Hans score) → ``store`` (the run's
Zarr store) → ``report`` (summary.json, figures, HTML) / ``export`` (ViRelAy) → ``run`` (plan,
Dask cluster and tasks, execution) → ``ci`` (``spray check``: exit code, JUnit, Markdown) →
``cli`` (the ``spray`` command, demo). ``errors`` (the error hierarchy) and ``progress`` (stage
progress on a terminal or in a log) are shared by every stage.
``tests/test_structure.py`` checks that no module imports a stage to its right.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spray-xai")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def analyze(features, pipeline="spray-default", embed=True, **overrides):
    """Run the SpRAy analysis on an ``(n, d)`` feature matrix.

    See :func:`spray.analysis.analyze.analyze` for the parameters and the result.
    """
    from spray.analysis.analyze import analyze as _analyze

    return _analyze(features, pipeline=pipeline, embed=embed, **overrides)
