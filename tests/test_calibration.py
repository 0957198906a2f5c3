"""The clean-score reference: rates, the tail, thresholds from a false-flag rate, fail-closed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spray.analysis.analyze import analyze
from spray.config.presets import FlagsSection, load_pipeline
from spray.errors import ConfigError
from spray.verdict import calibration
from spray.verdict.calibration import REFERENCE, clean_rate, rate_text, threshold_for
from spray.verdict.score import _verdict, clever_hans_score, flag_params, flag_threshold

DEFAULTS = FlagsSection().model_dump()
PIPE = load_pipeline("spray-default")


def _reference(tmp_path, scores, sections=None, **params):
    """A reference file of ``scores`` measured with the default flags (changed by ``params``)
    and the default pipeline's sections (or ``sections``)."""
    path = tmp_path / "ref.json"
    flags = calibration.scoring_params({**DEFAULTS, **params})
    path.write_text(json.dumps({"params": flags, "scores": [float(s) for s in scores],
                                "sections": sections or calibration.scoring_sections(PIPE)}))
    return path


@pytest.fixture()
def normal_reference(tmp_path):
    return _reference(tmp_path, np.round(np.random.default_rng(0).standard_normal(4000), 3))


def test_rate_is_the_share_of_reference_checks_at_or_above(normal_reference):
    scores = np.asarray(json.loads(normal_reference.read_text())["scores"])
    for s in [*np.quantile(scores, [0.1, 0.5, 0.9, 0.99, 0.999]), scores.max()]:
        r = clean_rate(float(s), DEFAULTS, PIPE, normal_reference)
        share = (scores >= s).mean()
        assert r["exceeded"] == int((scores >= s).sum()) and r["of"] == 4000
        assert r["rate"] == pytest.approx(share, rel=2e-3)
        assert share <= r["upper"] <= 1
        ref = calibration.reference(DEFAULTS, PIPE, normal_reference)
        assert r["upper"] == float(f"{ref.upper(float(s)):.3g}")   # the counts' bound itself


def test_rate_above_every_reference_check_is_extrapolated_below_one_in_n(normal_reference):
    ref = calibration.reference(DEFAULTS, PIPE, normal_reference)
    top = float(ref.scores[0])
    above = np.linspace(top + 1e-3, top + 5, 200)
    rates = [ref.rate(s) for s in above]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[0] == pytest.approx(1 / ref.n, rel=1e-2) and rates[0] <= 1 / ref.n
    assert ref.rate(top + ref.scale) == pytest.approx(np.exp(-1) / ref.n)
    # the counts alone bound it by ~3 / n however high the score
    assert ref.upper(top + 5) == pytest.approx(1 - 0.05 ** (1 / 4000), rel=1e-3)
    r = clean_rate(top + 1, DEFAULTS, PIPE, normal_reference)
    assert r["exceeded"] == 0 and "extrapolated" in rate_text(r)


def test_packaged_rate_never_exceeds_its_bound():
    ref = calibration.reference(DEFAULTS, PIPE)
    for s in np.unique(ref.scores):
        assert ref.rate(s) <= ref.upper(s)


@pytest.mark.parametrize("rate", [0.2, 0.01, 1e-3, 2e-4, 1e-5])
def test_threshold_is_the_lowest_score_of_at_most_the_rate(normal_reference, rate):
    t = threshold_for(rate, DEFAULTS, PIPE, normal_reference)
    ref = calibration.reference(DEFAULTS, PIPE, normal_reference)
    assert ref.rate(t) <= rate
    assert ref.rate(t - 0.001) > rate           # lower by one step: above the rate
    if rate * ref.n < 1:                        # beyond the reference: the tail's inverse
        assert ref.rate(t) == pytest.approx(rate, rel=0.01)


@pytest.mark.parametrize("scores", [[], [1.0] * 10, [0.0] * 100 + [float("nan")]])
def test_unusable_reference_gives_no_rate(tmp_path, scores):
    path = _reference(tmp_path, scores)
    assert clean_rate(1.0, DEFAULTS, PIPE, path) is None
    with pytest.raises(ConfigError, match="false_flag_rate cannot be used"):
        threshold_for(1e-3, DEFAULTS, PIPE, path)
    assert clean_rate(1.0, DEFAULTS, PIPE, tmp_path / "missing.json") is None


@pytest.mark.parametrize("content", ['[1, 2, 3]', json.dumps({"scores": list(range(40))}),
                                     json.dumps({"params": [], "sections": {},
                                                 "scores": list(range(40))}),
                                     '{"params": {}, "scores": "high"}', '{"scores": ['])
def test_malformed_reference_gives_no_rate(tmp_path, content):
    """A reference file of another shape (not an object, keys missing, not JSON) fails closed:
    no rate, and ``false_flag_rate`` is refused."""
    path = tmp_path / "ref.json"
    path.write_text(content)
    assert clean_rate(1.0, DEFAULTS, PIPE, path) is None
    with pytest.raises(ConfigError, match="false_flag_rate cannot be used"):
        threshold_for(1e-3, DEFAULTS, PIPE, path)


def test_reference_with_a_flag_this_run_lacks_gives_no_rate(tmp_path):
    """A reference scored with a flag (or section) this version does not know is another
    rule's: no rate."""
    path = _reference(tmp_path, np.arange(100.0), new_flag=1.0)
    assert clean_rate(1.0, DEFAULTS, PIPE, path) is None


def test_reference_of_other_flags_or_sections_gives_no_rate(tmp_path):
    scores = np.arange(100.0)
    path = _reference(tmp_path, scores, hot_spot_weight=0.0)
    assert clean_rate(1.0, DEFAULTS, PIPE, path) is None
    with pytest.raises(ConfigError, match="hot_spot_weight"):
        threshold_for(1e-3, DEFAULTS, PIPE, path)
    # the watch margin does not change scores; the threshold does (the bar for split-offs)
    assert clean_rate(1.0, {**DEFAULTS, "hot_spot_weight": 0.0, "watch_margin": 1.0}, PIPE,
                      path) is not None
    assert clean_rate(1.0, {**DEFAULTS, "hot_spot_weight": 0.0, "threshold": 3.0}, PIPE,
                      path) is None
    pooled = load_pipeline("spray-default", overrides={"preprocess": {"pool": [10, 10]}})
    path = _reference(tmp_path, scores)
    assert clean_rate(1.0, DEFAULTS, pooled, path) is None
    with pytest.raises(ConfigError, match="preprocess"):
        threshold_for(1e-3, DEFAULTS, pooled, path)


def test_false_flag_rate_sets_the_flag_threshold_of_a_loaded_pipeline():
    pipe = load_pipeline("spray-default", overrides={"flags": {"false_flag_rate": 1e-3}})
    params = flag_params(pipe)
    assert params.threshold == 1.7                           # still the bar for split-offs
    assert flag_threshold(params, pipe) == threshold_for(1e-3, DEFAULTS, PIPE) != 1.7
    assert flag_threshold(FlagsSection(), PIPE) == 1.7
    for flags in ({"hot_spot_weight": 0.0}, {"threshold": 2.0}):
        other = load_pipeline("spray-default", overrides={
            "flags": {"false_flag_rate": 1e-3, **flags}})
        with pytest.raises(ConfigError, match="false_flag_rate cannot be used"):
            flag_params(other)


def test_false_flag_rate_moves_the_decision_only():
    """The scores (and the split-offs) are those of the default threshold, which the reference
    was scored with; the class is flagged at the rate's threshold. In this class the halves of
    the large cluster score between the two thresholds: were the rate's threshold also the
    score's own threshold (a version measured on held-out draws: more clean groups split off
    and rose), one would split off, as the ``lowered`` check shows."""
    rel, x = _artefact_class(m=12)
    plain = load_pipeline("spray-default", overrides={"embedding": {"method": "none"}})
    rated = load_pipeline("spray-default", overrides={"embedding": {"method": "none"},
                                                      "flags": {"false_flag_rate": 0.3}})
    result = analyze(rel, pipeline=plain, embed=False)
    a = clever_hans_score(result, x, plain, features=rel)
    b = clever_hans_score(result, x, rated, features=rel)
    t = threshold_for(0.3, DEFAULTS, PIPE)
    assert b["threshold"] == t < a["threshold"] == 1.7
    lowered = load_pipeline("spray-default", overrides={"embedding": {"method": "none"},
                                                        "flags": {"threshold": t}})
    assert clever_hans_score(result, x, lowered, features=rel)["splits"] != a["splits"]
    assert b["score"] == a["score"] and b["splits"] == a["splits"]
    assert [c.get("score") for c in b["clusters"]] == [c.get("score") for c in a["clusters"]]
    assert b["suspect_clusters"] == [c["id"] for c in sorted(
        (c for c in b["clusters"] if c.get("score") is not None), key=lambda c: -c["score"])
        if c["score"] >= t]


def test_false_flag_rate_enters_the_pipeline_hash():
    from spray.run.tasks import pipeline_hash

    plain = load_pipeline("spray-default")
    rated = load_pipeline("spray-default", overrides={"flags": {"false_flag_rate": 1e-3}})
    key = {k: v for k, v in rated.items() if k != "health"}
    from spray.config.run_config import json_hash

    assert pipeline_hash(rated) == json_hash({**key, "clean_scores":
                                              calibration.reference_digest()})
    assert pipeline_hash(plain) == json_hash({k: v for k, v in plain.items() if k != "health"})


def test_packaged_reference_is_the_rule_of_this_tree():
    """Scored with the default flags and sections of this tree: a change of a scoring flag's
    default must come with a new reference (tests/benchmarks/verdict_calibration.py build)."""
    data = json.loads(REFERENCE.read_text())
    assert data["params"] == calibration.scoring_params(DEFAULTS)
    assert data["sections"] == calibration.scoring_sections(PIPE)
    assert data["checks"] == len(data["scores"]) >= 2000
    assert sum(s["checks"] for s in data["sources"]) == data["checks"]
    ref = calibration.reference(DEFAULTS, PIPE)
    assert ref.rate(FlagsSection().threshold) < 1e-3   # the default threshold is rare


def _artefact_class(grid: int = 20, n: int = 240, m: int = 40):
    """A class whose first ``m`` samples put their relevance on cell 0."""
    rng = np.random.default_rng(3)
    x = rng.random((n, grid * grid)) + 0.5
    rel = x * (1 + 0.3 * rng.standard_normal(x.shape))
    rel[:m] *= 0.3
    rel[:m, 0] = 6.0 + rng.random(m)
    rel /= np.abs(rel).sum(axis=1, keepdims=True)
    x /= np.abs(x).sum(axis=1, keepdims=True)
    return rel, x


def test_verdict_carries_the_clean_rate():
    rel, x = _artefact_class()
    pipe = load_pipeline("spray-default", overrides={"embedding": {"method": "none"}})
    result = analyze(rel, pipeline=pipe, embed=False)
    v = clever_hans_score(result, x, pipe, features=rel)
    ref = calibration.reference(DEFAULTS, pipe)
    assert v["flagged"]
    assert v["clean_rate"]["rate"] == pytest.approx(ref.rate(v["score"]), rel=1e-2)
    assert v["clean_rate"]["of"] == ref.n and v["clean_rate"]["reference"] == ref.digest
    other = load_pipeline("spray-default", overrides={
        "embedding": {"method": "none"}, "flags": {"colocation_weight": 4.0}})
    assert "clean_rate" not in clever_hans_score(result, x, other, features=rel)


def test_class_without_a_candidate_has_no_rate():
    v = _verdict([], np.zeros(10, dtype=int), [], [], FlagsSection(), PIPE, 1.7)
    assert v.score == 0.0 and v.clean_rate is None


def test_report_and_ci_reason_say_the_rate():
    from spray.ci.evidence import _reason
    from spray.report.class_page import _rate_note
    from spray.report.html import _threshold_text

    rate = {"rate": 0.0012, "upper": 0.0025, "exceeded": 4, "of": 3440}
    entry = {"name": "coat", "class": 4, "score": 3.1, "threshold": 1.7, "clean_rate": rate,
             "clusters": [{"id": 1, "size": 30, "fraction": 0.1, "score": 3.1, "suspect": True}],
             "suspect_cluster": 1, "suspect_clusters": [1]}
    assert "rate of 0.0012 per class check (4 of 3440 reference checks" in _reason(entry)
    assert "Clean classes score this high" in _rate_note(entry)
    assert _rate_note({k: v for k, v in entry.items() if k != "clean_rate"}) == ""
    judged = _threshold_text({"threshold": 1.7, "false_flag_rate": 0.001},
                             [{"threshold": 0.258}])
    assert "<code>0.258</code>" in judged and "false_flag_rate" in judged


def _scored_folder(path, settings, params=None):
    """An evaluation folder as ``eval_clever_hans.py --draws`` writes it: clean checks of
    ``settings`` (one class, 15 draws each) and the rule they were scored with."""
    path.mkdir()
    rows = [{"setting": s, "class": 0, "draw": d, "planted": False, "score": -1.0 - d / 10}
            for s in settings for d in range(15)]
    rows.append({"setting": settings[0], "class": 1, "draw": 0, "planted": True, "score": 3.0})
    (path / "draws.json").write_text(json.dumps(rows))
    (path / "rule.json").write_text(json.dumps({
        "params": {**DEFAULTS, **(params or {})}, "sections": calibration.scoring_sections(PIPE),
        "commit": "abc"}))
    return path


def test_extend_adds_clean_checks_of_new_settings_only(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "benchmarks"))
    import verdict_calibration as vc

    ref = tmp_path / "ref.json"
    vc.build([str(_scored_folder(tmp_path / "a", ["s1", "s2"]))], ref, trust_tree=False)
    before = json.loads(ref.read_text())
    assert before["checks"] == 30
    vc.extend([str(_scored_folder(tmp_path / "b", ["s3"]))], ref, trust_tree=False)
    after = json.loads(ref.read_text())
    assert after["checks"] == 45 == len(after["scores"])                    # planted left out
    assert sorted(after["scores"]) == sorted(before["scores"] + before["scores"][::2])
    assert [s["setting"] for s in after["sources"]] == ["s1", "s2", "s3"]
    assert after["command"].endswith("; extend b")
    with pytest.raises(SystemExit, match="already in the reference: s3"):      # no check twice
        vc.extend([str(_scored_folder(tmp_path / "c", ["s3"]))], ref, trust_tree=False)
    with pytest.raises(SystemExit, match="other flags"):                       # another rule
        vc.extend([str(_scored_folder(tmp_path / "d", ["s4"], {"threshold": 2.0}))], ref,
                  trust_tree=False)
    stale = {**after, "params": {**after["params"], "colocation_knee": 0.9}}
    ref.write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match="build it again"):                     # old reference
        vc.extend([str(_scored_folder(tmp_path / "e", ["s5"]))], ref, trust_tree=False)
