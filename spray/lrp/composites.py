"""Composites: which rule applies to which layer.

A :class:`Composite` maps layers to rules by module name (``name_map``), by the first dense or
convolution layer the input meets (``first_map``) and by layer type (``layer_map``), in that
order.  Layers a composite leaves unmapped keep their plain gradient.  Every composite also
carries the base map shared by all named composites (as in Zennit): activations pass relevance
through, average pooling and residual sums split it proportionally (``Norm``), BatchNorm layers
that cannot be folded into a preceding layer pass it through.

Named composites (parameters in brackets, defaults equal Zennit's):

``epsilon-plus-flat`` (epsilon=1e-6, stabilizer=1e-6)
    ε on dense layers, z⁺ on convolutions, flat on the first layer.
``epsilon-plus`` (epsilon, stabilizer)
    ε on dense layers, z⁺ on convolutions.
``epsilon-alpha2-beta1-flat`` / ``epsilon-alpha2-beta1`` (epsilon, stabilizer)
    ε on dense layers, α2β1 on convolutions, with / without flat on the first layer.
``epsilon-gamma-box`` (low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6)
    ε on dense layers, γ on convolutions, z^B on the first convolution.
``thesis-dnn`` (low=None, high=None, epsilon=0.01, alpha=2, beta=1, stabilizer=1e-6)
    the DNN setting of Lapuschkin (2019): αβ on convolutions, ε = 0.01 on dense layers and
    z^B on the input layer when bounds are given, the b-rule (flat) otherwise.
``attn-lrp`` (epsilon=1e-6, gamma=None, conv_gamma=None, stabilizer=1e-6)
    transformers (AttnLRP, Achtibat et al. 2024): uniform rule on the attention products,
    AttnLRP's softmax rule, LayerNorm with a constant scale, identity on GELU; ε on dense
    layers (γ when ``gamma`` is given), the dense rule or γ = ``conv_gamma`` on convolutions.
``cp-lrp`` (epsilon=1e-6, gamma=None, conv_gamma=None, stabilizer=1e-6)
    transformers (CP-LRP, Ali et al. 2022): as ``attn-lrp`` but the attention weights are
    constants, so the values receive all relevance of ``A·V``.

All composites map LayerNorm/RMSNorm and the pieces of exposed ``nn.MultiheadAttention`` (see
:mod:`spray.lrp.transformer`) to AttnLRP's rules unless they map them otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from spray.errors import ConfigError
from spray.lrp.layers import ACTIVATIONS, AFFINE, AVG_POOLS, BATCH_NORMS, CONVOLUTIONS, DENSE
from spray.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    Rule,
    ZBox,
    ZPlus,
    make_rule,
)
from spray.lrp.transformer import (
    LAYER_NORMS,
    PRODUCTS,
    AttentionProjection,
    AttentionSoftmax,
    AttentionValueProduct,
    LayerNormRule,
    ProductRule,
    QueryKeyProduct,
    SoftmaxRule,
)


@dataclass
class Composite:
    """A mapping from layers to rules.

    Parameters
    ----------
    layer_map:
        ``[(types, rule), ...]``; the first entry whose types match a layer gives its rule.
    first_map:
        like ``layer_map``, but only for the first layer (in execution order) matching one of
        its types, e.g. ``[(AFFINE, Flat())]``.
    name_map:
        ``{module_name: rule}``, overriding everything else for the named modules.
    stabilizer:
        stabiliser of the base map's ``Norm`` rule (average pooling, residual sums).
    """

    layer_map: list = field(default_factory=list)
    first_map: list = field(default_factory=list)
    name_map: dict = field(default_factory=dict)
    stabilizer: float = 1e-6
    name: str = "custom"

    def __post_init__(self):
        self.layer_map = [(types, make_rule(rule)) for types, rule in self.layer_map]
        self.first_map = [(types, make_rule(rule)) for types, rule in self.first_map]
        self.name_map = {name: make_rule(rule) for name, rule in self.name_map.items()}

    @property
    def base_map(self) -> list:
        """Rules shared by all composites for parameter-free layers, normalisation and the
        pieces of exposed attention (AttnLRP's rules unless a composite maps them)."""
        return [(ACTIVATIONS, Pass()), (AVG_POOLS, Norm(self.stabilizer)),
                (BATCH_NORMS, Pass()), (LAYER_NORMS, LayerNormRule(self.stabilizer)),
                (PRODUCTS, ProductRule(0.5, 0.5, self.stabilizer)),
                (AttentionSoftmax, SoftmaxRule("attnlrp"))]

    @property
    def sum_rule(self) -> Rule:
        """Rule for the addition of two branches (residual connections)."""
        return Norm(self.stabilizer)

    def assign(self, layers) -> dict:
        """Assign rules to ``layers``, an execution-ordered list of ``(key, name, module)``.

        Returns ``{key: rule}`` for every layer the composite maps.
        """
        assigned, first_done = {}, False
        for key, name, module in layers:
            if name in self.name_map:
                assigned[key] = self.name_map[name]
                continue
            if not first_done:
                rule = _lookup(self.first_map, module)
                if rule is not None:
                    assigned[key], first_done = rule, True
                    continue
            rule = _lookup(self.layer_map, module) or _lookup(self.base_map, module)
            if rule is not None:
                assigned[key] = rule
        return assigned

    def key(self) -> tuple:
        """Hashable description used to cache prepared models."""
        def entries(mapping):
            return tuple((tuple(t.__name__ for t in _as_tuple(types)), rule.key())
                         for types, rule in mapping)
        return (self.name, entries(self.layer_map), entries(self.first_map),
                tuple(sorted((n, r.key()) for n, r in self.name_map.items())), self.stabilizer)


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _lookup(mapping, module):
    return next((rule for types, rule in mapping if isinstance(module, _as_tuple(types))), None)


# ---------------------------------------------------------------------------------------------
# named composites
# ---------------------------------------------------------------------------------------------


def epsilon_plus_flat(epsilon=1e-6, stabilizer=1e-6):
    """ε on dense layers, z⁺ on convolutions, flat on the first layer."""
    return Composite(layer_map=[(CONVOLUTIONS, ZPlus(stabilizer)), (DENSE, Epsilon(epsilon))],
                     first_map=[(AFFINE, Flat(stabilizer))], stabilizer=stabilizer,
                     name="epsilon-plus-flat")


def epsilon_plus(epsilon=1e-6, stabilizer=1e-6):
    """ε on dense layers, z⁺ on convolutions."""
    return Composite(layer_map=[(CONVOLUTIONS, ZPlus(stabilizer)), (DENSE, Epsilon(epsilon))],
                     stabilizer=stabilizer, name="epsilon-plus")


def epsilon_alpha2_beta1_flat(epsilon=1e-6, stabilizer=1e-6):
    """ε on dense layers, α2β1 on convolutions, flat on the first layer."""
    return Composite(
        layer_map=[(CONVOLUTIONS, AlphaBeta(2.0, 1.0, stabilizer)), (DENSE, Epsilon(epsilon))],
        first_map=[(AFFINE, Flat(stabilizer))], stabilizer=stabilizer,
        name="epsilon-alpha2-beta1-flat")


def epsilon_alpha2_beta1(epsilon=1e-6, stabilizer=1e-6):
    """ε on dense layers, α2β1 on convolutions."""
    return Composite(
        layer_map=[(CONVOLUTIONS, AlphaBeta(2.0, 1.0, stabilizer)), (DENSE, Epsilon(epsilon))],
        stabilizer=stabilizer, name="epsilon-alpha2-beta1")


def epsilon_gamma_box(low=None, high=None, epsilon=1e-6, gamma=0.25, stabilizer=1e-6):
    """ε on dense layers, γ on convolutions, z^B (``low``, ``high``) on the first convolution."""
    if low is None or high is None:
        raise ConfigError("composite 'epsilon-gamma-box' needs the input bounds `low` and `high` "
                          "(e.g. low=0.0, high=1.0 for images in [0, 1])")
    return Composite(
        layer_map=[(CONVOLUTIONS, Gamma(gamma, stabilizer)), (DENSE, Epsilon(epsilon))],
        first_map=[(CONVOLUTIONS, ZBox(low, high, stabilizer))], stabilizer=stabilizer,
        name="epsilon-gamma-box")


def thesis_dnn(low=None, high=None, epsilon=0.01, alpha=2.0, beta=1.0, stabilizer=1e-6):
    """Lapuschkin (2019) DNN setting: αβ on convolutions, ε = 0.01 on dense layers, z^B (or the
    b-rule when no bounds are given) at the input layer."""
    first = ZBox(low, high, stabilizer) if low is not None and high is not None else Flat(stabilizer)
    return Composite(
        layer_map=[(CONVOLUTIONS, AlphaBeta(alpha, beta, stabilizer)), (DENSE, Epsilon(epsilon))],
        first_map=[(AFFINE, first)], stabilizer=stabilizer, name="thesis-dnn")


def transformer_composite(linear, conv=None, projections=None, softmax="attnlrp",
                          value_share=0.5, stabilizer=1e-6, name="transformer"):
    """A composite for transformers (and mixed CNN + attention models).

    Parameters
    ----------
    linear:
        rule of the dense layers (MLP blocks, classification head).
    conv:
        rule of the convolutions (the patch embedding); default: ``linear``.
    projections:
        rule of the query/key/value/output projections of exposed attention modules
        (:class:`~spray.lrp.transformer.AttentionProjection`); default: ``linear``.
    softmax:
        ``"attnlrp"`` (AttnLRP's softmax rule, uniform split of ``Q·Kᵀ``) or ``"constant"``
        (CP-LRP: attention weights constant, nothing flows into the scores).
    value_share:
        share of the relevance of ``A·V`` given to the values; the rest goes to the attention
        weights (``0.5``: AttnLRP's uniform rule).  Forced to 1 when ``softmax="constant"``.
    stabilizer:
        ε of the residual sums, products and LayerNorm.
    """
    linear = make_rule(linear)
    constant = softmax == "constant"
    share = 1.0 if constant else float(value_share)
    layer_map = [
        (AttentionProjection, make_rule(projections) if projections is not None else linear),
        (DENSE, linear), (CONVOLUTIONS, make_rule(conv) if conv is not None else linear),
        (LAYER_NORMS, LayerNormRule(stabilizer)),
        (QueryKeyProduct, ProductRule(0.5, 0.5, stabilizer)),
        (AttentionValueProduct, ProductRule(1.0 - share, share, stabilizer)),
        (AttentionSoftmax, SoftmaxRule(softmax)),
    ]
    return Composite(layer_map=layer_map, stabilizer=stabilizer, name=name)


def _linear_rule(epsilon, gamma, stabilizer):
    return Gamma(gamma, stabilizer) if gamma is not None else Epsilon(epsilon)


def attn_lrp(epsilon=1e-6, gamma=None, conv_gamma=None, stabilizer=1e-6):
    """AttnLRP: uniform rule on ``Q·Kᵀ`` and ``A·V``, AttnLRP's softmax rule, LayerNorm with a
    constant scale, identity on GELU; ε (or γ when ``gamma`` is given) on dense layers and
    attention projections, γ = ``conv_gamma`` (else the dense rule) on the patch embedding."""
    linear = _linear_rule(epsilon, gamma, stabilizer)
    conv = Gamma(conv_gamma, stabilizer) if conv_gamma is not None else linear
    return transformer_composite(linear, conv, softmax="attnlrp", stabilizer=stabilizer,
                                 name="attn-lrp")


def cp_lrp(epsilon=1e-6, gamma=None, conv_gamma=None, stabilizer=1e-6):
    """CP-LRP: attention weights as constants (all relevance of ``A·V`` to the values, none to
    queries and keys); otherwise as ``attn-lrp``."""
    linear = _linear_rule(epsilon, gamma, stabilizer)
    conv = Gamma(conv_gamma, stabilizer) if conv_gamma is not None else linear
    return transformer_composite(linear, conv, softmax="constant", stabilizer=stabilizer,
                                 name="cp-lrp")


COMPOSITES: dict[str, Callable[..., Composite]] = {
    "attn-lrp": attn_lrp,
    "cp-lrp": cp_lrp,
    "epsilon-plus-flat": epsilon_plus_flat,
    "epsilon-plus": epsilon_plus,
    "epsilon-alpha2-beta1-flat": epsilon_alpha2_beta1_flat,
    "epsilon-alpha2-beta1": epsilon_alpha2_beta1,
    "epsilon-gamma-box": epsilon_gamma_box,
    "thesis-dnn": thesis_dnn,
}


def resolve(composite, **kwargs) -> Composite:
    """Build a :class:`Composite` from a name (with keyword parameters), a composite, or a user
    mapping ``{module name or layer type: rule}``."""
    if isinstance(composite, Composite):
        _no_kwargs(kwargs, "a Composite instance")
        return composite
    if isinstance(composite, dict):
        _no_kwargs(kwargs, "a rule mapping")
        return _from_mapping(composite)
    if not isinstance(composite, str):
        raise ConfigError(f"composite must be a name, a Composite or a mapping, "
                          f"not {type(composite).__name__}")
    name = composite.strip().lower().replace("_", "-")
    if name not in COMPOSITES:
        raise ConfigError(f"unknown LRP composite {composite!r}; known: {sorted(COMPOSITES)} "
                          "(or 'zennit:<Name>' to run a Zennit composite)")
    factory = COMPOSITES[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"composite {name!r} has no parameter(s) {unknown}; "
                          f"it accepts {sorted(accepted)}")
    return factory(**kwargs)


def _no_kwargs(kwargs, what):
    if kwargs:
        raise ConfigError(f"keyword parameters {sorted(kwargs)} cannot be combined with {what}")


def _from_mapping(mapping: dict) -> Composite:
    """``{"features.0": Flat(), nn.Conv2d: "zplus", nn.Linear: Epsilon(0.01)}`` → Composite."""
    names, types = {}, []
    for key, rule in mapping.items():
        if isinstance(key, str):
            names[key] = rule
        elif isinstance(key, type) or (isinstance(key, tuple) and all(isinstance(k, type) for k in key)):
            types.append((key, rule))
        else:
            raise ConfigError(f"rule mapping keys must be module names or layer types, not {key!r}")
    return Composite(layer_map=types, name_map=names, name="mapping")
