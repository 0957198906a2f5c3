"""The Clever-Hans verdict of a class (the rule: docs/verdict.md).

:func:`spray.verdict.score.score_class` runs the steps, each a module a test can call alone:
:mod:`~spray.verdict.candidates` (groups to score), :mod:`~spray.verdict.evidence` (what is
measured on each), :mod:`~spray.verdict.bootstrap` (stability over resamples),
:mod:`~spray.verdict.halves` (split-off halves and sweep cuts, groups of other K),
:mod:`~spray.verdict.graphs` (conductance, sweeps, bisection) and
:mod:`~spray.verdict.result` (the typed :class:`~spray.verdict.result.Verdict`).
"""
