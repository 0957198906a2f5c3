"""Analysis pipeline presets: loading, merging and validation.

A pipeline is a nested dict with the sections ``preprocess``, ``affinity``, ``spectral``,
``clustering``, ``embedding``, ``flags`` and ``health`` (plus ``name`` and ``description``). Presets live as
YAML files in ``pipelines/`` and are selected by name (``spray-default``, ``lowpass``, ``fft``,
``abs``, ``corelay-compat``); a preset may start from another one with ``extends: <name>``.

:func:`load_pipeline` accepts a preset name, a path to a YAML file or a dict, merges
``overrides`` section by section and validates the result. Unknown keys and wrong types raise a
:class:`~spray.errors.ConfigError` naming the dotted key, e.g.
``pipeline key 'affinity.k': must be a positive integer or 'auto', got -1``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spray.errors import ConfigError

SECTIONS = ("preprocess", "affinity", "spectral", "clustering", "embedding", "flags", "health")
_TOP_LEVEL = ("name", "description", "extends", "preset") + SECTIONS


def _positive_int_or_auto(value: Any, minimum: int = 1) -> int | str:
    """Accept 'auto' or an integer >= ``minimum`` (bools and floats with a fraction refused)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or int(value) < minimum:
        word = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"must be {word} or 'auto'")
    return int(value)


class _Section(BaseModel):
    """A preset section: every key and its default are defined once, in its class."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def coerce(cls, params: _Section | dict | None) -> Self:
        """The section itself, or a (partial) dict validated into it, defaults filled in.

        Raises
        ------
        ConfigError
            An unknown key or a wrong value, named as in a preset.
        """
        if isinstance(params, cls):
            return params  # type: ignore[return-value]
        try:
            return cls.model_validate(dict(params or {}))
        except ValidationError as exc:
            raise ConfigError(_format_error(exc)) from None


class PreprocessSection(_Section):
    """Relevance maps -> feature vectors (see :mod:`spray.analysis.preprocess`)."""

    channel_sum: bool = True
    transform: Literal["none", "abs", "lowpass", "fft"] = "none"
    lowpass_sigma: float = Field(default=1.0, gt=0)
    pool: tuple[int, int] | None = (20, 20)
    normalize: Literal["l1", "l2", "none"] = "l1"

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, value):
        if value is None or value == "none":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
            raise ValueError("must be two positive integers [height, width], one integer or null")
        return tuple(value)


class AffinitySection(_Section):
    """kNN graph (see :mod:`spray.analysis.knn`)."""

    k: int | str = "auto"
    weighting: Literal["binary", "gaussian", "local-scaling"] = "binary"
    symmetrize: Literal["max", "mean"] = "max"
    approximate_above: int = Field(default=50000, ge=0)
    search: Literal["auto", "exact", "approximate"] = "auto"
    ann_max_lid: float = Field(default=40.0, gt=0)
    exact_max_cost: float = Field(default=0.0, ge=0)
    min_recall: float = Field(default=0.95, ge=0, le=1)
    sigma: float | str = "auto"
    scale_neighbor: int = Field(default=7, ge=1)
    ann_neighbors: int = Field(default=20, ge=1)
    ann_iters: int | str = "auto"
    ann_trees: int | str = "auto"
    ann_pca: int | str | None = None
    n_jobs: int = -1

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, value):
        return _positive_int_or_auto(value)

    @field_validator("ann_iters", "ann_trees", mode="before")
    @classmethod
    def _auto_ints(cls, value):
        return _positive_int_or_auto(value)

    @field_validator("ann_pca", mode="before")
    @classmethod
    def _ann_pca(cls, value):
        if value is None or value == "none":
            return None
        return _positive_int_or_auto(value)

    @field_validator("sigma", mode="before")
    @classmethod
    def _sigma(cls, value):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError("must be a positive number or 'auto' (median kNN distance)")
        return float(value)


class SpectralSection(_Section):
    """Eigen-decomposition of L_sym (see :mod:`spray.analysis.spectral`)."""

    n_eigenvalues: int = Field(default=32, ge=1)
    solver: Literal["auto", "eigsh", "chebyshev", "lobpcg"] = "auto"
    tol: float = Field(default=0.0, ge=0)
    seed: int = 0


class ClusteringSection(_Section):
    """Cluster assignment on the eigenvectors (see :mod:`spray.analysis.clustering`)."""

    method: Literal["kmeans", "agglomerative", "hdbscan"] = "kmeans"
    n_clusters: int | str = "auto"
    max_clusters: int = Field(default=10, ge=2)
    seed: int = 0
    eigenvectors: int | str = "n_clusters"
    normalize_rows: bool = True
    n_init: int = Field(default=10, ge=1)
    linkage: Literal["ward", "average", "complete", "single"] = "ward"
    min_cluster_size: int | str = "auto"

    @field_validator("n_clusters", mode="before")
    @classmethod
    def _n_clusters(cls, value):
        return _positive_int_or_auto(value)

    @field_validator("eigenvectors", mode="before")
    @classmethod
    def _eigenvectors(cls, value):
        if value in ("n_clusters", "all"):
            return value
        try:
            return _positive_int_or_auto(value)
        except ValueError:
            raise ValueError("must be 'n_clusters', 'all' or a positive integer") from None

    @field_validator("min_cluster_size", mode="before")
    @classmethod
    def _min_size(cls, value):
        return _positive_int_or_auto(value, minimum=2)


class EmbeddingSection(_Section):
    """2-D t-SNE map (see :mod:`spray.analysis.embedding`)."""

    method: Literal["tsne", "none"] = "tsne"
    perplexity: float = Field(default=7.0, gt=0)
    early_exaggeration: float = Field(default=6.0, gt=0)
    early_exaggeration_iter: int = Field(default=100, ge=0)
    n_iter: int = Field(default=250, ge=0)
    exaggeration: float | None = Field(default=None, gt=0)
    init: Literal["spectral", "pca", "random"] = "spectral"
    affinity: Literal["graph", "features"] = "graph"
    learning_rate: float | str = "auto"
    n_jobs: int = 1
    seed: int = 0

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _lr(cls, value):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError("must be a positive number or 'auto'")
        return float(value)


class FlagsSection(_Section):
    """Clever-Hans score (see :mod:`spray.verdict` and docs/verdict.md, where the rule is described)."""

    score: Literal["input-contrast"] = "input-contrast"
    threshold: float = 1.7
    #: when set, a class is flagged at the lowest score whose rate among the clean class checks
    #: of the evaluation's reference is at most this, instead of at ``threshold``, which stays
    #: the bar for split-offs while scoring (:mod:`spray.verdict.calibration`; refused where the
    #: run's flags or analysis sections are not the reference's).
    false_flag_rate: float | None = Field(default=None, gt=0, lt=1)
    #: classes scoring within this margin below the threshold are listed as "watch" (never
    #: failing): a near miss stays visible in the run's verdict, summary.json and the report
    watch_margin: float = Field(default=0.5, ge=0)
    min_cluster_fraction: float = Field(default=0.02, ge=0, le=1)
    max_cluster_fraction: float = Field(default=0.5, ge=0, le=1)
    min_cluster_size: int = Field(default=5, ge=1)
    conductance_floor: float = Field(default=1e-3, gt=0)
    bootstrap: int = Field(default=10, ge=0)
    bootstrap_fraction: float = Field(default=0.8, gt=0, le=1)
    bootstrap_quantile: float = Field(default=0.5, ge=0, le=1)
    bootstrap_max_samples: int = Field(default=20000, ge=10)
    #: a class of more samples is scored on a stratified random subsample of this many (its
    #: candidates still come from the analysis of the whole class; :mod:`spray.verdict.subsample`).
    #: 2 000, the largest class the rule was designed on: the score of a larger class then costs
    #: less than its analysis (docs/verdict.md, "Large classes")
    score_max_samples: int = Field(default=2000, ge=100)
    size_prior_knee: float = Field(default=0.35, ge=0, le=1)
    size_prior_weight: float = Field(default=1.0, ge=0)
    concentration_area: float = Field(default=0.1, gt=0, le=1)
    min_concentration: float = Field(default=0.0, ge=0, le=1)
    input_mask_area: float = Field(default=0.1, ge=0, lt=1)
    #: the input randomness leaves out the group's input footprint: the cells where its mean
    #: input differs from the rest's by at least ``input_mask_share`` of the largest such
    #: difference, at least ``input_mask_area`` and at most ``input_mask_max_area`` of the cells
    #: (a stamp keeps the least; a 1-px frame covers about 19 % of a 20 x 20 grid).
    #: ``input_mask_max_area`` at or below ``input_mask_area``: always ``input_mask_area``.
    input_mask_share: float = Field(default=0.5, ge=0, le=1)
    input_mask_max_area: float = Field(default=0.3, ge=0, lt=1)
    input_randomness_knee: float = Field(default=0.9, ge=0)
    input_randomness_weight: float = Field(default=10.0, ge=0)
    colocation_knee: float = Field(default=0.5, ge=0, le=1)
    colocation_weight: float = Field(default=5.0, ge=0)
    colocation_noise: float = Field(default=2.0, ge=0)
    #: for a group that is random without its input footprint (randomness at least the knee),
    #: the colocation counts, besides the relevance hot spot, every region of the input
    #: difference it touches: 8-connected cells whose excess is at least this share of the
    #: largest (a frame whose top side the model looks at counts whole). 0: the hot spot alone.
    colocation_region_share: float = Field(default=0.3, ge=0, le=1)
    #: with the class's raw inputs and ``hot_spot_agreement_spread``: for a group whose
    #: members carry a pattern of their own at the hot spot (separation in the pixels at least
    #: ``hot_spot_knee``), the colocation is at least the same share measured in the pixels
    #: (each colour channel), while the pooled hot spot's lies below the knee — fine stripes
    #: that pooling averages into a photograph (docs/verdict.md, "The colocation in the
    #: pixels"). Off by default (the clean-score reference was scored without it)
    colocation_pixels: bool = False
    #: edge randomness: the group's conductance in the kNN graph of the inputs' edge energy
    #: (:func:`spray.analysis.preprocess.edge_energy`, preprocessed like the inputs) over a
    #: random subset's; a stamp's edges separate its group (low), a group the edges do not
    #: separate (high: e.g. objects at one side of the image) loses ``edge_randomness_weight``
    #: per unit above the knee (docs/verdict-eval.md, "Edge energy"). Weight 0: not measured
    #: (the callers pass no edge features).
    edge_randomness_knee: float = Field(default=0.6, ge=0)
    edge_randomness_weight: float = Field(default=10.0, ge=0)
    #: hot-spot separation: ROC AUC with which the group's inputs at its relevance hot spot (the
    #: ``input_mask_area`` of cells where its relevance differs most) tell it from the rest of
    #: the class; a stamp there separates its group (scenes 0.85-1, grey 0.78-1), a group whose
    #: inputs there are no more alike than a random subset's (about 0.5-0.65: objects at one
    #: side of a photograph) loses ``hot_spot_weight`` per unit below the knee
    #: (docs/verdict.md, step 3). Weight 0: not measured.
    hot_spot_knee: float = Field(default=0.75, ge=0, le=1)
    hot_spot_weight: float = Field(default=10.0, ge=0)
    #: the hot-spot separation measured in the pixels too: with the raw inputs, the separation
    #: is the larger of the pooled one and how well what half the members agree on there (pixel
    #: and colour values within this spread times the rest's deviation) tells the other half
    #: from the rest of the class (:meth:`~spray.verdict.patterns.InputPatterns.
    #: agreement_separation`). Pooling blurs fine stripes into the photograph beneath them
    #: (stamped groups 0.63-0.72, random subsets 0.54-0.66); in the pixels they separate at
    #: 0.99-1.0 while clean clusters agree on nothing (0.5; docs/verdict-eval.md, "Results: the
    #: hot spot in its pixels"). None: pooled only (the default rule)
    hot_spot_agreement_spread: float | None = Field(default=None, gt=0, le=1,
                                                    allow_inf_nan=False)
    #: and a half counts (else 0.5) only where it agrees, in every colour channel of a pixel,
    #: on at least this share of the hot spot's values: stripes that cover a third of their
    #: pixels about 0.25; members of a clean ViT cluster whose objects cover the hot spot
    #: agreed on 0.02-0.12 of the values (their separation 0.81 otherwise), clusters of green
    #: objects on the green channel alone (0.82-0.90 otherwise)
    hot_spot_agreed_share: float = Field(default=0.15, ge=0, le=1)
    #: hot-spot mass: the group's mean share of |relevance| at its hot spot minus the rest's
    #: share there (each sample's |relevance| summed to 1). A stamp the model uses draws
    #: relevance to it (0.08-0.62 on the design draws' detections); a stamp it barely uses,
    #: cut by its edges (a digit top line: 0.015), or a group set apart by *less* relevance
    #: somewhere (negative)
    #: loses ``hot_spot_mass_weight`` per unit below the knee (docs/verdict-eval.md, "Hot-spot
    #: mass"). Weight 0: measured, not scored (the default before 2026-12-03).
    hot_spot_mass_knee: float = Field(default=0.05, ge=-1, le=1)
    hot_spot_mass_weight: float = Field(default=50.0, ge=0)
    #: suspect members: when a suspect's inputs at its relevance hot spot (the
    #: ``input_mask_area`` of cells where its relevance differs most) tell it from the rest of
    #: the class with ROC AUC at least this, the members that do not carry the group's pattern
    #: there leave it (:mod:`spray.verdict.members`); scores and flags do not change. Above 1:
    #: never.
    trim_min_auc: float = Field(default=0.99, ge=0)
    #: and of the members outside the core, only those below Q1 − ``trim_fence_iqr`` × IQR of
    #: the core's projections leave (a stamp on objects of varied brightness keeps its members)
    trim_fence_iqr: float = Field(default=1.0, ge=0)
    #: members matched anywhere join only when the members' lower fence lies at or above
    #: Q3 + ``peak_guard_iqr`` × IQR of the samples outside (1 joined 11 unstamped samples of
    #: a frame at equality; docs/verdict-eval.md, "The guard of the last member step")
    peak_guard_iqr: float = Field(default=1.5, ge=0)
    #: while that guard refuses, the window matched anywhere is taken twice as wide, at most
    #: this many times (a ViT's one-cell hot spot gives a 2-pixel window that matches part of
    #: any image; docs/verdict-eval.md, "Results: a window wider than a one-cell hot spot").
    #: 0: never
    peak_window_doublings: int = Field(default=2, ge=0, le=6)
    #: and a guard that refuses still lets the candidates in when they stand apart from the
    #: rest of the samples outside: fewer than half, the rest's upper fence at or below the
    #: members' lower fence, and fewer of the rest within this gap (in cosine) below that fence
    #: than half the candidates (carriers outside lift the outside's fence themselves). 0: never
    peak_carrier_gap: float = Field(default=0.1, ge=0, le=1)
    #: once that guard passes, a sample outside joins from the members' lower fence or, lower,
    #: from the far fences of both sides in Fisher z (artanh): above Q3 + this × IQR of the
    #: samples outside below the members' fence and within Q1 − this × IQR of the members'
    #: (carriers at another place match less crisply than the members at theirs; 3 took
    #: unstamped samples into 10 of 58 logo suspects; docs/verdict-eval.md, "Results: carriers
    #: below the members' fence"). None: from the members' lower fence only
    peak_far_iqr: float | None = Field(default=4.0, ge=0, allow_inf_nan=False)
    #: when at least this share of a suspect's members match at exactly the place of another
    #: member's best match, and not by chance (``members.fixed_places``: a stamp, frame, text
    #: or logo at fixed places; a colour patch that moves with its object does not), a
    #: candidate of that step joins only where its best match lies within half a window of a
    #: place two members share, or within a quarter window of the best matches of
    #: ``peak_place_carriers`` − 1 other candidates (a logo in another corner): look-alikes of
    #: a frame or a square match at a place of their own (docs/verdict-eval.md, "Results:
    #: carriers at a place"). Above 1: anywhere
    peak_place_share: float = Field(default=0.5, ge=0)
    #: the fewest candidates, counting itself, that make another place of the artefact
    peak_place_carriers: int = Field(default=3, ge=1)
    #: with the raw inputs, before the pattern join: a suspect's members whose pattern
    #: correlation at its hot spot lies below Q3 + this × IQR of the samples outside's (they do
    #: not carry the pattern), below the lower fence of the members that do
    #: (``trim_fence_iqr``) and below the midpoint between the two groups' medians leave it,
    #: when those that do are at least half the members (look-alikes the relevance graph put
    #: in kept the members' fence too low for anyone to join; docs/verdict-eval.md, "Results:
    #: look-alikes inside a suspect"). None: never
    pattern_trim_iqr: float | None = Field(default=1.0, ge=0)
    #: and with this, a suspect whose members agree on values there (pixel and colour within
    #: this spread times the rest's deviation) is trimmed by the distance to them instead: a
    #: member nearer the outside's median distance than the members' leaves (fine stripes at
    #: 70 % over photographs: the correlation trim let stamped members with a dark background
    #: go, recall 0.84-0.87; by agreement none left and precision rose to 0.97-0.99;
    #: docs/verdict-eval.md, "Results: the hot spot in its pixels"). Not for window cuts, and
    #: nothing without ``pattern_trim_iqr``. None: the correlation trim only (the default)
    agreement_trim_spread: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    #: the pattern join takes in, once its guard passes, the samples outside at or above the
    #: larger of Q3 + this × IQR of the samples outside's correlations and the midpoint between
    #: their median and the members' (when lower than the members' lower fence). None: only
    #: from the members' lower fence
    pattern_join_iqr: float | None = Field(default=1.5, ge=0)
    #: and when its guard refuses, the samples outside still join from the lowest bar between
    #: the members' lower fence and their median at which they stand apart from the rest:
    #: fewer than half, the rest's upper fence at or below the bar, and fewer of the rest
    #: within this gap (in correlation) below it than half of them — a suspect that holds a
    #: part of a half-transparent stamp's carriers, the rest outside lifting the outside's
    #: fence (on in the preset ``followed``; docs/verdict.md, "Members that stand apart").
    #: 0: never
    pattern_join_gap: float = Field(default=0.0, ge=0, le=1)
    #: with the raw inputs, after the pattern join: the pixels of a suspect's hot spot where
    #: its members deviate from their median at most this times as much as the samples
    #: outside do are what the members agree on (a stamp); when the members' distances there
    #: (in units of the outside's deviation) have their upper fence at most this too (an
    #: opaque stamp), a sample outside as close to the members' values joins (fences at
    #: ``pattern_join_iqr``; none without it). Stamped samples whose relevance lies on the
    #: object stay outside the graph's cut, and the correlation misses them where the hot spot
    #: holds object cells too (docs/verdict-eval.md, "Members by what they agree on"). None:
    #: never
    agreement_spread: float | None = Field(default=0.1, ge=0, le=1)
    #: what a suspect's members agree on is also looked for anywhere in every image (on in
    #: the preset ``followed``):
    #: a sample outside that carries it at a place ``peak_place_carriers`` candidates share,
    #: or at the members' own, joins (a logo in one of several corners; docs/verdict.md,
    #: "Members by what they agree on, anywhere")
    agreement_anywhere: bool = False
    #: with the raw inputs and relevance maps, last: what a suspect's members agree on (value
    #: by value, ``agreement_spread``) in their windows where the model looks, aligned on
    #: their best match, is looked for anywhere in every image; a sample outside within
    #: ``agreement_spread`` of it joins, and a member of a window cut far from it leaves (the
    #: guard's and the trim's fences at ``pattern_join_iqr``) — a colour patch that moves with
    #: the object, which a window cut holds only in part (on in the preset ``followed``;
    #: docs/verdict.md, "Members by what they agree on where the model looks")
    aligned_agreement: bool = False
    candidates: Literal["analysis", "all-k"] = "analysis"
    bisect_clusters: bool = True
    other_k_min_jaccard: float = Field(default=0.5, ge=0, le=1)
    sweep_eigenvectors: int = Field(default=10, ge=0)
    sweep_min_jaccard: float = Field(default=0.9, ge=0, le=1)
    #: sweep cuts along this many leading eigenvectors of the kNN graph of the inputs' edge
    #: energy are candidates too, their contrast measured against that graph instead of the
    #: relevance graph (a stamp the model attends to beside the object: the relevance graph
    #: does not separate its samples, their edges do); tried only when no cluster or relevance
    #: sweep cut reaches the threshold. 0: off; none either without the edge graph (no edge
    #: features, or ``edge_randomness_weight`` 0)
    edge_sweep_eigenvectors: int = Field(default=10, ge=0)
    #: a cluster that already holds such an edge cut (Jaccard ≥ ``sweep_min_jaccard``, so the
    #: cut cannot split off) is measured against the edge graph too and keeps the better score
    #: (a frame whose relevance cluster is the stamped group exactly: docs/verdict-eval.md,
    #: "Scoring a cluster by the edge graph"). Off by default: the clean-score reference was
    #: scored without it, so a run with it gets no ``clean_rate``
    edge_lift: bool = False
    #: window cuts: sweep cuts along this many leading eigenvectors of the kNN graph of *peak
    #: windows* (each sample's raw input window, per channel centred, where its |relevance|
    #: is densest, wherever that is) are candidates too, their contrast measured against that
    #: graph (``log(φ_input / φ_windows)``) and their place-bound penalties (colocation,
    #: hot-spot separation and mass, edges) replaced by the window mass below: an artefact
    #: that moves with the object (a colour patch) or sits at one of several places puts
    #: the same pattern under every stamped sample's peak, wherever it is
    #: (docs/verdict-eval.md, "Window cuts"). Tried only when no cluster, relevance or edge
    #: cut reaches the threshold. 0 (the default): off; none either without the relevance
    #: maps at the inputs' resolution. Experimental, opt-in: on rebuilt models they flagged
    #: other classes of patch models (docs/verdict-eval.md, "Window cuts on rebuilt
    #: models"), and the clean-score reference was scored without them, so a run with them
    #: gets no ``clean_rate``
    window_sweep_eigenvectors: int = Field(default=0, ge=0)
    #: the peak window's side as a share of the inputs' shorter side (at least 3 pixels)
    window_side: float = Field(default=0.22, gt=0, le=1, allow_inf_nan=False)
    #: window mass: a window cut's median share of |relevance| in its members' peak windows
    #: minus the rest's; a group the model looks at more narrowly there (a colour patch it
    #: uses: 0.13-0.56 on the design draws) keeps its score, a group whose windows merely look
    #: alike (the same part of a digit under every peak: about 0) loses ``window_mass_weight``
    #: per unit below the knee (the hot-spot mass's weight: at 10, such digit groups of clean
    #: models scored up to 5.45; docs/verdict-eval.md, "Window cuts")
    window_mass_knee: float = Field(default=0.1, ge=-1, le=1, allow_inf_nan=False)
    window_mass_weight: float = Field(default=50.0, ge=0, allow_inf_nan=False)
    #: transplant test (:mod:`spray.verdict.transplant`): with the model at hand, each suspect's
    #: inputs where its relevance differs from the rest's (the ``input_mask_area`` share of the
    #: image) and at each member's peak window (``window_side``) are pasted onto this many
    #: images of the other classes, and so are the rest's; a suspect the model is shown to
    #: ignore is none (the class is not flagged but watched); one it follows, or that the test
    #: cannot decide, stays one (fail closed). 0 (the default): off; off too where the run has
    #: no model (precomputed attributions). It changes no score (docs/verdict.md,
    #: "Transplant test")
    transplant_pairs: int = Field(default=0, ge=0)
    #: the bar of the test: followed when the members' pieces turn at least this share more
    #: target images to the class than the rest's at a paired z of at least
    #: ``transplant_min_z`` in either region; ignored when in every region the effect lies
    #: below this share by ``transplant_min_z`` standard errors. 0.05: the reliance from which
    #: the evaluation counts an artefact as relied on (docs/verdict-eval.md, "Results: the
    #: transplant test")
    transplant_min_effect: float = Field(default=0.05, ge=0, le=1, allow_inf_nan=False)
    transplant_min_z: float = Field(default=3.0, ge=0, allow_inf_nan=False)
    #: an undecided suspect is tested again with four times the pairs, up to this many (new
    #: draws from the same target and donor images; at the defaults up to 21 times the first
    #: run's forward passes): an effect near the bar gets the pairs to tell. At most
    #: ``transplant_pairs``: no second run
    transplant_max_pairs: int = Field(default=4096, ge=0)
    #: candidates below the threshold the model is asked about (on in the preset ``followed``):
    #: when the spectral rule finds no suspect, the clusters and cuts scored within this much
    #: below the threshold are tested (best first, at most ``transplant_near_tries``), and the
    #: first whose pieces at their place the model is shown to follow (an effect of at least
    #: ``transplant_near_effect``, ``transplant_near_z`` of the test's clustered errors above
    #: none) becomes the suspect; its score stays as it is. One corner of a logo on several
    #: corners is too small a group for the graphs to separate far; clean strokes of a class's
    #: own digits on plain backgrounds are followed as surely, but their pieces are not alike
    #: (``transplant_near_agreed``; docs/verdict.md, "Suspects the model follows below the
    #: threshold"). 0 (the default): off; off too without the transplant test
    transplant_reach: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    transplant_near_tries: int = Field(default=2, ge=1)
    #: 0.1 in the preset ``followed``, where ``transplant_near_max_pairs`` estimates the effect
    #: surely enough that a sub-type's pieces followed as class evidence reach 0.05 (bags of a
    #: garment CNN: 0.065 at 1 024 pairs; docs/verdict.md, "More pairs for a candidate below
    #: the threshold")
    transplant_near_effect: float = Field(default=0.05, ge=0, le=1, allow_inf_nan=False)
    #: 3.0 clustered errors: the suspect test's own z; of the design candidates without an
    #: artefact whose pieces are alike (below) none reached 2.2
    transplant_near_z: float = Field(default=3.0, ge=0, allow_inf_nan=False)
    #: and the members' pieces must be alike at their place: in at least
    #: ``transplant_near_agreed`` of the place's pixel values the members lie within
    #: ``transplant_near_spread`` times the rest's deviation of their median (a logo, a frame,
    #: stripes: 0.28-0.48 on the design draws; clean digit strokes on plain backgrounds the
    #: model follows as class evidence: at most 0.08)
    transplant_near_spread: float = Field(default=0.5, gt=0, le=1, allow_inf_nan=False)
    transplant_near_agreed: float = Field(default=0.15, ge=0, le=1, allow_inf_nan=False)
    #: a candidate below the threshold whose pieces are alike and whose ``place`` effect is
    #: neither shown nor shown below ``transplant_near_effect`` (one run of
    #: ``transplant_pairs``) is tested again with four times the pairs, up to this many (on in
    #: the preset ``followed``: 4096). The bar stays; its error is clustered by donor and
    #: target, so the pairs sharpen the estimate, not the claim. At most ``transplant_pairs``
    #: (0, the default): one run
    transplant_near_max_pairs: int = Field(default=0, ge=0)
    #: a group the transplant test shows followed (a candidate below the threshold: with its
    #: pieces alike) with fewer pairs than the most it may use
    #: (``transplant_max_pairs`` for a suspect, ``transplant_near_max_pairs`` for a candidate
    #: below the threshold) is tested again with that many (new draws) and decided on that
    #: run: decided on its surest estimate, so that its flag and the gate's score (docs/
    #: verdict.md, "The gate's score") do not hang on one draw of 256 pairs (on in the preset
    #: ``followed``)
    transplant_confirm: bool = False
    #: with the transplant test of candidates below the threshold (``transplant_reach``) and
    #: window cuts: when none of those candidates is shown followed, the samples that carry
    #: what a window cut's members agree on where the model looks (value by value within
    #: ``agreement_spread``, anywhere in the image; any score) are candidates too, largest
    #: first, at most ``transplant_near_tries`` of them, and the first whose members' peak
    #: windows the model is shown to follow (``transplant_near_effect``,
    #: ``transplant_near_z``) becomes the suspect, split off as a cluster of its own (the
    #: class's score is then its best cluster's, as after any split; unflagged classes keep
    #: theirs). A colour patch on the object that no candidate brings near the threshold (on
    #: in the preset ``followed``; docs/verdict.md, "Candidates by what their members carry")
    carried_candidates: bool = False
    #: with ``carried_candidates``: when none of the carried candidates is shown followed,
    #: the samples that carry what a group of samples whose patterns where the model looks
    #: recur in each other agree on are candidates too (``recurrence_samples`` samples of the
    #: class compared pairwise, at most ``recurrence_seeds`` groups, most recurring first; at
    #: most ``transplant_near_tries`` of them tested). A pixel-identical stamp at one of
    #: several places that no graph cuts as one group (a corner logo; on in the preset
    #: ``followed``; docs/verdict.md, "Candidates by a pattern that recurs")
    recurring_candidates: bool = False
    #: the samples of a class whose peak windows are matched against each other's images for
    #: ``recurring_candidates`` (evenly spaced; the cost grows with its square)
    recurrence_samples: int = Field(default=300, ge=20, le=2000)
    #: the most seed groups ``recurring_candidates`` hands on
    recurrence_seeds: int = Field(default=4, ge=1)
    #: with ``recurring_candidates``: when none of its groups is shown followed, seed groups
    #: whose fine detail (each image less its 3 × 3 local mean) recurs are candidates with
    #: the samples whose best cosine with their pattern there stands apart from the rest's
    #: (``pattern_join_gap``; off at 0), tested where each carries it. A stamp blended over
    #: the image (fine stripes at 70 %; on in the preset ``followed``; docs/verdict.md,
    #: "Candidates by a recurring fine detail")
    recurring_detail: bool = False
    seed: int = 0


class HealthSection(_Section):
    """Relevance health limits for ``spray check --fail-on health`` (see docs/lrp.md).

    A sample's conservation ratio (Σ input relevance / explained logit) is *outside* when it
    lies outside ``[conservation_min, conservation_max]`` or is undefined; a class fails when
    more than ``max_outside`` of its samples are outside, more than ``max_nonfinite`` of its
    maps hold NaN/Inf or more than ``max_zero_maps`` are all zero. ``max_chance_p`` is read by
    the gate always: a model at chance explains nothing, so no verdict on it is vouched for.
    The defaults catch exploding, reversed, vanishing and non-finite relevance for CNN and
    transformer composites alike (AttnLRP keeps far less of the logit than the CNN
    composites); tighten them per model.
    """

    conservation_min: float = -1.0
    conservation_max: float = 10.0
    max_outside: float = Field(default=0.1, ge=0, le=1)
    max_nonfinite: int = Field(default=0, ge=0)
    max_zero_maps: int = Field(default=0, ge=0)
    #: the gate refuses (exit 3) a run whose model does not beat chance on the analysed samples
    #: at this one-sided binomial p-value (:mod:`spray.skill`); checked without
    #: ``--fail-on``
    max_chance_p: float = Field(default=1e-3, gt=0, le=1)


class PipelineModel(_Section):
    """A whole analysis pipeline."""

    name: str = "custom"
    description: str = ""
    preprocess: PreprocessSection = Field(default_factory=PreprocessSection)
    affinity: AffinitySection = Field(default_factory=AffinitySection)
    spectral: SpectralSection = Field(default_factory=SpectralSection)
    clustering: ClusteringSection = Field(default_factory=ClusteringSection)
    embedding: EmbeddingSection = Field(default_factory=EmbeddingSection)
    flags: FlagsSection = Field(default_factory=FlagsSection)
    health: HealthSection = Field(default_factory=HealthSection)


# --------------------------------------------------------------------------------------------
# locating and reading presets


def presets_dir() -> Path:
    """The folder holding the preset YAML files."""
    try:
        from importlib.resources import files

        folder = files("spray.pipelines_data")
        path = Path(str(folder))
        if path.is_dir() and any(path.glob("*.yaml")):
            return path
    except (ModuleNotFoundError, TypeError, FileNotFoundError):
        pass
    import spray

    return Path(spray.__file__).resolve().parent.parent / "pipelines"


def available_presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"pipeline file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"pipeline file {str(path)!r} must hold a mapping of sections")
    return data


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or "\\" in spec


def _load_raw(spec: str | Path | dict, base_dir: Path | None, _seen: tuple = ()) -> dict:
    """Read ``spec`` into a raw nested dict, following ``extends``/``preset`` chains."""
    if isinstance(spec, dict):
        raw = copy.deepcopy(spec)
        origin = None
    elif isinstance(spec, (str, Path)):
        spec_str = str(spec)
        if isinstance(spec, Path) or _looks_like_path(spec_str):
            path = Path(spec_str).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            raw = _read_yaml(path)
            raw.setdefault("name", path.stem)
            origin = path.parent
        else:
            path = presets_dir() / f"{spec_str}.yaml"
            if not path.exists():
                raise ConfigError(f"pipeline key 'preset': unknown pipeline preset {spec_str!r}; "
                                  f"available: {', '.join(available_presets())}")
            raw = _read_yaml(path)
            raw.setdefault("name", spec_str)
            origin = path.parent
    else:
        raise ConfigError(f"pipeline: expected a preset name, a YAML path or a mapping, got "
                          f"{type(spec).__name__}")
    parent = raw.pop("extends", None) or raw.pop("preset", None)
    raw.pop("preset", None)
    if parent is None and isinstance(spec, dict):
        parent = "spray-default"
    if parent is not None:
        if parent in _seen:
            raise ConfigError(f"pipeline key 'extends': circular preset chain via {parent!r}")
        base = _load_raw(parent, origin or base_dir, _seen + (parent,))
        name = raw.get("name", base.get("name"))
        raw = merge(base, raw)
        if name is not None:
            raw["name"] = name
    return raw


def merge(base: dict, overrides: dict | None) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base`` (mappings merged key by key)."""
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal[")))
        loc = loc.replace(".int", "").replace(".str", "").replace(".float", "")
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            from spray.config.hints import did_you_mean

            msg = "unknown key" + did_you_mean(PipelineModel, tuple(err["loc"]))
        got = err.get("input")
        suffix = "" if err["type"] in ("extra_forbidden", "missing") else f", got {got!r}"
        parts.append(f"pipeline key '{loc}': {msg}{suffix}")
    # one line per key, duplicates (union branches) removed
    return "; ".join(dict.fromkeys(parts))


def validate(raw: dict) -> dict:
    """Validate a raw pipeline dict; return the plain nested dict with all defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError("pipeline: expected a mapping of sections")
    unknown = [k for k in raw if k not in _TOP_LEVEL]
    if unknown:
        raise ConfigError(f"pipeline key '{unknown[0]}': unknown section (known: "
                          f"{', '.join(SECTIONS)})")
    for section in SECTIONS:
        if section in raw and raw[section] is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"pipeline key '{section}': must be a mapping, got {raw[section]!r}")
    clean = {k: v for k, v in raw.items() if k not in ("extends", "preset") and v is not None}
    try:
        model = PipelineModel.model_validate(clean)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    out = model.model_dump()
    if out["preprocess"]["pool"] is not None:
        out["preprocess"]["pool"] = list(out["preprocess"]["pool"])
    return out


def load_pipeline(spec: str | Path | dict = "spray-default", overrides: dict | None = None,
                  base_dir: str | Path | None = None) -> dict:
    """Load, merge and validate an analysis pipeline.

    Parameters
    ----------
    spec
        a preset name (``pipelines/<name>.yaml``), a path to a YAML file (relative paths
        resolve against ``base_dir``) or a dict (its optional ``preset`` / ``extends`` key
        names the preset it starts from, ``spray-default`` otherwise).
    overrides
        nested dict merged section by section, e.g. ``{"affinity": {"k": 5}}``.
    base_dir
        folder relative YAML paths resolve against.

    Returns
    -------
        A plain nested dict with the sections ``preprocess``, ``affinity``, ``spectral``,
        ``clustering``, ``embedding``, ``flags``, ``health`` and the keys ``name``,
        ``description``.

    Raises
    ------
    ConfigError
        unknown preset, unreadable file, unknown key or wrong type (names the key).
    """
    base = Path(base_dir) if base_dir is not None else None
    raw = _load_raw(spec, base)
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError("pipeline overrides: expected a mapping of sections")
        for key, value in overrides.items():
            if key in SECTIONS and value is not None and not isinstance(value, dict):
                raise ConfigError(f"pipeline key '{key}': an override must be a mapping of keys, "
                                  f"got {value!r}")
        raw = merge(raw, overrides)
    return validate(raw)
