"""Has the model learnt anything? Its accuracy on the analysed samples against chance.

SpRAy reads a model's strategies from its relevance maps; a model whose predictions do not
depend on the class explains nothing, and its relevance can still fall into tight groups (a
group of k + 1 mutual neighbours has relevance conductance 0 whatever made it). The gate
therefore vouches for a verdict only when the model beats chance on the samples it analysed.

Chance is the accuracy of predictions drawn independently of the labels with the model's own
prediction shares (Cohen's expected agreement): ``Σ_c π_label(c) · π_predicted(c)`` over the
analysed classes. A model that always answers one class, or answers at random in any
proportions, sits at chance; one that follows its artefact but not the object (a stamp that
turns every class into one) does not. The test is one-sided binomial on the number of correct
predictions (:func:`scipy.stats.binomtest`); ``kappa`` is ``(accuracy − chance) / (1 −
chance)``. Samples without a prediction (attribution files that hold none, stored as −1) are
left out; with fewer than two classes of known predictions the question cannot be asked (a
one-class run: every prediction share equals the accuracy), nor with so few samples that a
model right on all of them would not reach the level.

:func:`model_skill` reads the predictions a run stored per class; the run records it in the
store, and the summary computes it from the store when a store made before the record lacks
it. The module lives outside the analysis and verdict code: a change here does not make a
resumed run analyse its classes again.
"""

from __future__ import annotations

import numpy as np


def chance_test(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Accuracy, chance, kappa and the one-sided binomial p-value of ``predictions``.

    Parameters
    ----------
    labels : (n,) int
        The class of each analysed sample.
    predictions : (n,) int
        The model's predicted class of each sample (−1: unknown, left out).

    Returns
    -------
    dict
        ``samples`` and ``classes`` (with a known prediction), ``correct``, ``accuracy``,
        ``chance``, ``kappa`` and ``p_value`` (None when fewer than two classes are known).
    """
    labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    known = predictions >= 0
    y, p = labels[known].astype(np.int64), predictions[known].astype(np.int64)
    classes, counts = np.unique(y, return_counts=True)
    out = {"samples": int(len(y)), "classes": int(len(classes)), "correct": None,
           "accuracy": None, "chance": None, "kappa": None, "p_value": None}
    if len(classes) < 2:
        return out
    n = len(y)
    correct = int((y == p).sum())
    predicted = np.array([(p == c).sum() for c in classes])
    chance = float(np.sum(counts * predicted) / float(n) ** 2)
    accuracy = correct / n
    out.update({"correct": correct, "accuracy": accuracy, "chance": chance,
                "kappa": (accuracy - chance) / (1.0 - chance) if chance < 1 else 0.0,
                "p_value": _p_above(correct, n, chance)})
    return out


def model_skill(classes, current) -> dict:
    """:func:`~spray.skill.chance_test` of the stored predictions of the run's classes
    (``current``; all stored ones when None) whose LRP chunks are all written."""
    labels, predictions = [], []
    for key in sorted(classes, key=int):
        if current is not None and int(key) not in current:
            continue
        cg = classes[key]
        if "prediction" not in cg or not np.all(cg["done"][:]):
            continue
        pred = np.asarray(cg["prediction"][:])
        labels.append(np.full(len(pred), int(key)))
        predictions.append(pred)
    if not labels:
        return chance_test(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return chance_test(np.concatenate(labels), np.concatenate(predictions))


def _p_above(correct: int, n: int, chance: float) -> float:
    """P(X ≥ correct) for X ~ Binomial(n, chance)."""
    if chance <= 0.0:
        return 0.0 if correct > 0 else 1.0
    if chance >= 1.0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(correct, n, chance, alternative="greater").pvalue)


def max_chance_p(limits: dict | None) -> float:
    """``health.max_chance_p`` of a run's health limits (its preset default without one)."""
    from spray.config.presets import HealthSection

    value = (limits or {}).get("max_chance_p")
    return float(HealthSection.model_fields["max_chance_p"].default if value is None else value)


def learnt(skill: dict | None, max_p: float) -> bool | None:
    """True when the model beats chance at level ``max_p``, False when not, None when the
    record cannot tell: no record, fewer than two classes with known predictions, or too few
    samples for even a model right on all of them to reach ``max_p`` (``chance ** samples``
    above it, e.g. two classes of four samples)."""
    if not skill or skill.get("p_value") is None:
        return None
    if skill["p_value"] <= max_p:
        return True
    if float(skill["chance"]) ** int(skill["samples"]) > max_p:
        return None
    return False


def skill_text(skill: dict) -> str:
    """One line: accuracy against chance, kappa and the p-value, on how many samples."""
    return (f"accuracy {skill['accuracy']:.3f} on {skill['samples']} samples of "
            f"{skill['classes']} classes against chance {skill['chance']:.3f} (kappa "
            f"{skill['kappa']:.3f}, one-sided binomial p = {skill['p_value']:.2g})")
