"""The clean-score reference: rates, the tail, thresholds from a false-flag rate, fail-closed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spray.analysis.analyze import analyze
from spray.config.presets import FlagsSection, load_pipeline
from spray.errors import ConfigError
from spray.verdict import calibration
from spray.verdict.calibration import REFERENCE, clean_rate, rate_text, threshold_for
from spray.verdict.score import clever_hans_score, flag_params


def _reference(tmp_path, scores, **params):
    """A reference file of ``scores`` measured with the default flags (changed by ``params``)."""
    path = tmp_path / "ref.json"
    flags = calibration.scoring_params({**FlagsSection().model_dump(), **params})
    path.write_text(json.dumps({"params": flags, "scores": list(map(float, scores))}))
    calibration._load.cache_clear()
    return path


@pytest.fixture()
def normal_reference(tmp_path):
    return _reference(tmp_path, np.random.default_rng(0).standard_normal(4000))


def test_rate_is_the_empirical_share_where_the_reference_reaches(normal_reference):
    defaults = FlagsSection().model_dump()
    scores = np.sort(json.loads(normal_reference.read_text())["scores"])
    for q in (0.5, 0.9, 0.99):
        s = float(np.quantile(scores, q))
        r = clean_rate(s, defaults, normal_reference)
        assert r["exceeded"] == int((scores >= s).sum()) and r["of"] == 4000
        assert r["upper"] > r["exceeded"] / 4000
        if q < 0.95:      # below the tail: the share itself
            assert r["rate"] == pytest.approx((scores >= s).mean(), rel=1e-3)
        else:             # in the tail: the fitted model, near the share
            assert r["rate"] == pytest.approx((scores >= s).mean(), rel=0.5)


def test_tail_extrapolates_monotonically_and_continuously(normal_reference):
    ref = calibration.reference(FlagsSection().model_dump(), normal_reference)
    u, scale, m = ref.tail
    assert m == 200 and scale > 0                       # the top 5 % of 4 000
    grid = np.linspace(-1, 6, 400)
    rates = [ref.rate(s) for s in grid]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert abs(ref.rate(u) - m / ref.n) <= 1.001 / ref.n
    assert ref.rate(u + 1e-9) == pytest.approx(m / ref.n)
    # a standard normal's tail: P(Z ≥ 3.5) ≈ 2.3e-4; the exponential fit is within 10×
    assert 2.3e-5 < ref.rate(3.5) < 2.3e-3
    # the counts alone bound a score above every reference check by ~3 / n
    assert ref.upper(10.0) == pytest.approx(1 - 0.05 ** (1 / 4000), rel=1e-3)


@pytest.mark.parametrize("rate", [0.2, 0.01, 1e-3, 1e-5])
def test_threshold_for_a_rate_inverts_the_rate(normal_reference, rate):
    t = threshold_for(rate, FlagsSection().model_dump(), normal_reference)
    ref = calibration.reference(FlagsSection().model_dump(), normal_reference)
    assert ref.rate(t) == pytest.approx(rate, rel=0.05, abs=2 / ref.n)


def test_reference_of_other_flags_gives_no_rate(tmp_path):
    path = _reference(tmp_path, np.arange(100.0), hot_spot_weight=0.0)
    defaults = FlagsSection().model_dump()
    assert clean_rate(1.0, defaults, path) is None
    with pytest.raises(ConfigError, match="false_flag_rate"):
        threshold_for(1e-3, defaults, path)
    # the threshold does not change scores: another threshold keeps the rate
    assert clean_rate(1.0, {**defaults, "hot_spot_weight": 0.0, "threshold": 3.0},
                      path) is not None


def test_false_flag_rate_sets_the_threshold_and_excludes_it():
    params = flag_params({"flags": {"false_flag_rate": 1e-3}})
    assert params.threshold == threshold_for(1e-3, FlagsSection().model_dump())
    with pytest.raises(ConfigError, match="either threshold or false_flag_rate"):
        flag_params({"flags": {"false_flag_rate": 1e-3, "threshold": 2.0}})
    with pytest.raises(ConfigError, match="false_flag_rate"):
        flag_params({"flags": {"false_flag_rate": 1e-3, "hot_spot_weight": 0.0}})


def test_packaged_reference_is_the_rule_of_this_tree():
    """Scored with the default flags of this tree: a change of a scoring flag's default must
    come with a new reference (tests/benchmarks/verdict_calibration.py build)."""
    data = json.loads(REFERENCE.read_text())
    assert data["params"] == calibration.scoring_params(FlagsSection().model_dump())
    assert data["checks"] == len(data["scores"]) >= 2000
    assert sum(s["checks"] for s in data["sources"]) == data["checks"]
    ref = calibration.reference(FlagsSection().model_dump())
    # the default threshold is rare among clean checks
    assert ref.rate(FlagsSection().threshold) < 1e-3


def test_verdict_and_its_text_carry_the_clean_rate():
    rng = np.random.default_rng(3)
    n, grid = 240, 10
    x = rng.random((n, grid * grid)) + 0.5
    rel = x * (1 + 0.3 * rng.standard_normal(x.shape))
    rel[:40] *= 0.3
    rel[:40, 0] = 6.0 + rng.random(40)
    rel /= np.abs(rel).sum(axis=1, keepdims=True)
    x /= np.abs(x).sum(axis=1, keepdims=True)
    pipe = load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [grid, grid]}, "embedding": {"method": "none"}})
    result = analyze(rel, pipeline=pipe, embed=False)
    v = clever_hans_score(result, x, pipe, features=rel)
    ref = calibration.reference(FlagsSection().model_dump())
    assert v["clean_rate"]["rate"] == pytest.approx(ref.rate(v["score"]), rel=1e-2)
    assert v["clean_rate"]["of"] == ref.n
    text = rate_text(v["clean_rate"])
    assert f"of {ref.n} reference checks" in text
    other = load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [grid, grid]}, "embedding": {"method": "none"},
        "flags": {"colocation_weight": 4.0}})
    assert "clean_rate" not in clever_hans_score(result, x, other, features=rel)


def test_report_and_ci_reason_say_the_rate():
    from spray.ci.evidence import _reason
    from spray.report.class_page import _rate_note

    rate = {"rate": 1.2e-5, "upper": 0.0012, "exceeded": 0, "of": 2480}
    entry = {"name": "coat", "class": 4, "score": 3.1, "threshold": 1.7, "clean_rate": rate,
             "clusters": [{"id": 1, "size": 30, "fraction": 0.1, "score": 3.1, "suspect": True}],
             "suspect_cluster": 1, "suspect_clusters": [1]}
    assert "rate of ~1.2e-05 per class check (0 of 2480 reference checks" in _reason(entry)
    assert "Clean classes score this high" in _rate_note(entry)
    assert _rate_note({k: v for k, v in entry.items() if k != "clean_rate"}) == ""
