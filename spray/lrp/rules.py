"""LRP decomposition rules as modified forward/backward passes (thesis §2.2.6, §2.3.2).

Every rule for a dense or convolution layer has three steps:

``prepare(op)``
    derive the modified weights from the (BatchNorm-folded) layer parameters, once per model;
``forward(op, params, x)``
    compute the layer output the network needs *and* the denominators the rule needs, usually
    in one stacked operator call, and return what the backward step needs;
``backward(op, params, saved, relevance)``
    turn the relevance of the layer output into the relevance of its input with (stacked)
    transposed passes.

Definitions follow the LRP literature and, for identical names and defaults, Zennit, so that
the same composite gives the same relevance maps:

* ``Epsilon``: ``R_i = x_i Σ_j w_ij R_j / (z_j + ε·sign(z_j))`` (sign(0) = 1).
* ``ZPlus`` (α1β0): positive contributions ``w⁺x⁺ + w⁻x⁻`` plus the *positive part of the bias*
  in the denominator.
* ``AlphaBeta``: ``α·(positive share) − β·(negative share)``, α − β = 1; the positive
  (negative) denominator includes the positive (negative) part of the bias.
* ``Gamma``: weights ``w + γw⁺`` for positive outputs and ``w + γw⁻`` for negative outputs.
* ``Flat`` (b-rule): all inputs and weights 1, bias 0: relevance spread uniformly over the
  receptive field.
* ``WSquare``: inputs 1, weights ``w²`` (and squared bias, as in Zennit).
* ``ZBox`` (z^B): bounded inputs ``low ≤ x ≤ high``.
* ``Norm``: epsilon-like proportional split for parameter-free linear maps (average pooling,
  sums of residual branches).
* ``Pass``: relevance passes unchanged (activations, unfoldable normalisation).
* ``Gradient``: the plain gradient (kept for completeness and for user mappings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spray.errors import ConfigError
from spray.lrp.ops import (
    bound_like,
    is_nonnegative,
    joined_denominators,
    signed_apply,
    signed_transpose,
    stabilize,
)


class Rule:
    """Base class of all rules."""

    #: which layers a rule can apply to: "affine" (dense/conv), "any" (elementwise/pooling)
    applies_to = "affine"

    def prepare(self, op) -> object:
        """Modified weights of an affine layer ``op``, computed once per model (affine rules)."""
        raise NotImplementedError(f"{type(self).__name__} does not apply to dense or "
                                  f"convolution layers")

    def key(self) -> tuple:
        """A hashable description (rule name and parameters) used to cache prepared weights."""
        return (type(self).__name__,) + tuple(sorted(
            (k, _freeze(v)) for k, v in vars(self).items()))


def _freeze(value):
    """Hashable stand-in for a rule parameter (tensors by value when small)."""
    if isinstance(value, torch.Tensor):
        if value.numel() <= 4096:
            return (tuple(value.shape), tuple(value.detach().cpu().reshape(-1).tolist()))
        return ("tensor", id(value))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# rules for dense and convolution layers
# ---------------------------------------------------------------------------------------------


@dataclass
class Epsilon(Rule):
    """LRP-ε: ``R_i = x_i Σ_j w_ij R_j / (z_j + ε·sign(z_j))``; ε = 0 gives LRP-0."""

    epsilon: float = 1e-6

    def prepare(self, op):
        return {}

    def forward(self, op, params, x):
        z = op.apply(x, op.weight, op.bias)
        return z, (x, stabilize(z, self.epsilon))

    def backward(self, op, params, saved, relevance):
        x, denominator = saved
        # the transposed pass returns a fresh tensor: multiply by the input in place
        return op.transpose(relevance / denominator, op.weight, x.shape).mul_(x)


@dataclass
class ZPlus(Rule):
    """z⁺ (α1β0) as in Zennit: denominator ``w⁺x⁺ + w⁻x⁻ + b⁺``, stabilised by ``stabilizer``."""

    stabilizer: float = 1e-6

    def prepare(self, op):
        w = op.weight
        pos, neg = w.clamp(min=0), w.clamp(max=0)
        bias_pos = op.bias.clamp(min=0) if op.bias is not None else None
        return {"pos": pos, "neg": neg, "bias_pos": bias_pos,
                "w_pos": op.stack_weights([w, pos]),
                "b_pos": op.stack_bias([op.bias, bias_pos]) if op.bias is not None else None,
                "split": op.stack_inputs([pos, neg])}

    def forward(self, op, params, x):
        nonneg = params.get("nonnegative_input") or is_nonnegative(x)
        if nonneg:
            z, positive = op.split_output(op.apply(x, params["w_pos"], params["b_pos"]), 2)
            # w⁺x + b⁺ ≥ 0 for x ≥ 0: the stabilised denominator is z⁺ + ε (also for a −0, as in
            # Zennit), written in place into the stacked output, which nothing else uses
            return z, (x, nonneg, positive.add_(self.stabilizer))
        z = op.apply(x, op.weight, op.bias)
        positive = signed_apply(op, x, params["split"], params["bias_pos"],
                                 (params["pos"], params["neg"]))
        return z, (x, nonneg, stabilize(positive, self.stabilizer))

    def backward(self, op, params, saved, relevance):
        x, nonneg, denominator = saved
        signal = relevance / denominator
        if nonneg:
            return x * op.transpose(signal, params["pos"], x.shape)
        return signed_transpose(op, x, signal, params["split"], (params["pos"], params["neg"]))


@dataclass
class AlphaBeta(Rule):
    """αβ-rule: ``α·z⁺_ij/z⁺_j − β·z⁻_ij/z⁻_j``, with α − β = 1 (α2β1 by default)."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ConfigError(
                f"alpha-beta rule needs alpha, beta >= 0 and alpha - beta = 1 "
                f"(got alpha={self.alpha}, beta={self.beta})")

    def prepare(self, op):
        w = op.weight
        pos, neg = w.clamp(min=0), w.clamp(max=0)
        biases = (op.bias.clamp(min=0), op.bias.clamp(max=0)) if op.bias is not None else (None, None)
        return {"pos": pos, "neg": neg, "bias_pos": biases[0], "bias_neg": biases[1],
                "w_pos": op.stack_weights([w, pos]),
                "b_pos": op.stack_bias([op.bias, biases[0]]) if op.bias is not None else None,
                "w_back": op.stack_weights([self.alpha * pos, -self.beta * neg]),
                "split_pos": op.stack_inputs([pos, neg]), "split_neg": op.stack_inputs([neg, pos])}

    def forward(self, op, params, x):
        nonneg = params.get("nonnegative_input") or is_nonnegative(x)
        if nonneg:
            # one stacked pass: z = wx + b and z⁺ = w⁺x + b⁺; z⁻ = z − z⁺ = w⁻x + b⁻
            z, positive = op.split_output(op.apply(x, params["w_pos"], params["b_pos"]), 2)
            negative = z - positive
        else:
            z = op.apply(x, op.weight, op.bias)
            positive = signed_apply(op, x, params["split_pos"], params["bias_pos"],
                                     (params["pos"], params["neg"]))
            negative = signed_apply(op, x, params["split_neg"], params["bias_neg"],
                                     (params["neg"], params["pos"]))
        if not nonneg:
            return z, (x, nonneg, stabilize(positive, self.stabilizer),
                       stabilize(negative, self.stabilizer))
        # α W⁺ᵀ(R/z⁺) − β W⁻ᵀ(R/z⁻): one division into the joined signal and one stacked
        # transposed pass over [αW⁺; −βW⁻]
        return z, (x, nonneg, joined_denominators(op, [positive, negative], self.stabilizer))

    def backward(self, op, params, saved, relevance):
        x, nonneg = saved[:2]
        if nonneg:
            signal = op.divide_signal(relevance, saved[2], 2)
            return x * op.transpose(signal, params["w_back"], x.shape)
        den_pos, den_neg = saved[2:]
        s_pos, s_neg = relevance / den_pos, relevance / den_neg
        split_pos, split_neg = params["split_pos"], params["split_neg"]
        pairs_pos, pairs_neg = (params["pos"], params["neg"]), (params["neg"], params["pos"])
        return (self.alpha * signed_transpose(op, x, s_pos, split_pos, pairs_pos)
                - self.beta * signed_transpose(op, x, s_neg, split_neg, pairs_neg))


@dataclass
class Gamma(Rule):
    """γ-rule (generalised as in Zennit): ``w + γw⁺`` for positive, ``w + γw⁻`` for negative outputs."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def prepare(self, op):
        w, g = op.weight, self.gamma
        pos, neg = w.clamp(min=0), w.clamp(max=0)
        up, down = w + g * pos, w + g * neg
        params = {"up": up, "down": down, "w_pos": op.stack_weights([w, pos]),
                  "w_back": op.stack_weights([up, down]),
                  "bias_up": None, "bias_down": None, "b_pos": None,
                  "split_up": op.stack_inputs([up, down]),
                  "split_down": op.stack_inputs([down, up])}
        if op.bias is not None:
            b = op.bias
            params["bias_up"] = b + g * b.clamp(min=0)
            params["bias_down"] = b + g * b.clamp(max=0)
            params["b_pos"] = op.stack_bias([b, b.clamp(min=0)])
        return params

    def forward(self, op, params, x):
        g = self.gamma
        nonneg = params.get("nonnegative_input") or is_nonnegative(x)
        if nonneg:
            # one stacked pass: z = wx + b and z⁺ = w⁺x + b⁺ (so z − z⁺ = w⁻x + b⁻)
            z, positive = op.split_output(op.apply(x, params["w_pos"], params["b_pos"]), 2)
            up = z + g * positive                 # (w + γw⁺) x + b + γb⁺
            down = z + g * (z - positive)         # (w + γw⁻) x + b + γb⁻
        else:
            z = op.apply(x, op.weight, op.bias)
            up = signed_apply(op, x, params["split_up"], params["bias_up"],
                               (params["up"], params["down"]))
            down = signed_apply(op, x, params["split_down"], params["bias_down"],
                                 (params["down"], params["up"]))
        # s↑ = [z > 0] / (z↑ + ε), s↓ = [z < 0] / (z↓ − ε), written into one joined buffer:
        # the backward (w+γw⁺)ᵀ(R⊙s↑) + (w+γw⁻)ᵀ(R⊙s↓) is one product and one stacked pass
        joined = op.empty_joined(z, 2)
        buffer, views = joined if joined is not None else (None, [None, None])
        s_up = stabilize(up, self.stabilizer, out=views[0]).reciprocal_().mul_(z > 0)
        s_down = stabilize(down, self.stabilizer, out=views[1]).reciprocal_().mul_(z < 0)
        if not nonneg:
            return z, (x, nonneg, s_up, s_down)
        return z, (x, nonneg, buffer if buffer is not None else op.join_signals([s_up, s_down]))

    def backward(self, op, params, saved, relevance):
        x, nonneg = saved[:2]
        if nonneg:
            signal = op.expand_signal(saved[2], relevance, 2)
            return x * op.transpose(signal, params["w_back"], x.shape)
        s_up, s_down = saved[2:]
        a, b = relevance * s_up, relevance * s_down
        pairs_up, pairs_down = (params["up"], params["down"]), (params["down"], params["up"])
        return (signed_transpose(op, x, a, params["split_up"], pairs_up)
                + signed_transpose(op, x, b, params["split_down"], pairs_down))


class _ConstantDenominatorRule(Rule):
    """Rules whose modified input is constant (ones): the denominator depends only on the shape."""

    def _weight(self, op):
        raise NotImplementedError

    def _bias(self, op):
        return None

    def prepare(self, op):
        return {"weight": self._weight(op), "bias": self._bias(op), "cache": {}}

    def _denominator(self, op, params, x):
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        denominator = params["cache"].get(key)
        if denominator is None:
            ones = torch.ones((1,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
            denominator = stabilize(op.apply(ones, params["weight"], params["bias"]),
                                    self.stabilizer)
            params["cache"][key] = denominator
        return denominator

    def forward(self, op, params, x):
        z = op.apply(x, op.weight, op.bias)
        return z, (x.shape, self._denominator(op, params, x))

    def backward(self, op, params, saved, relevance):
        shape, denominator = saved
        return op.transpose(relevance / denominator, params["weight"], shape)


@dataclass
class Flat(_ConstantDenominatorRule):
    """Flat / b-rule: relevance spread uniformly over each output's receptive field."""

    stabilizer: float = 1e-6

    def _weight(self, op):
        return torch.ones_like(op.weight)

    # With all weights 1 and no bias, every output unit sees the same denominator (the size of
    # its receptive field) and every input unit the same sum over output units: the transposed
    # pass over all channels reduces to a channel sum and one single-channel pass.
    def prepare(self, op):
        params = super().prepare(op)
        if op.is_conv and op.groups == 1:
            params["box"] = op.weight.new_ones((1, 1) + tuple(op.weight.shape[2:]))
        return params

    def forward(self, op, params, x):
        z, (shape, denominator) = super().forward(op, params, x)
        if op.is_conv and op.groups != 1:
            return z, (shape, denominator)
        return z, (shape, denominator[:, :1] if op.is_conv else denominator[..., :1])

    def backward(self, op, params, saved, relevance):
        shape, denominator = saved
        if op.is_conv and op.groups != 1:
            return super().backward(op, params, saved, relevance)
        if not op.is_conv:
            total = relevance.sum(-1, keepdim=True).div_(denominator)
            return total.expand(shape).contiguous()
        total = relevance.sum(1, keepdim=True).div_(denominator)
        single = op.transpose(total, params["box"], (shape[0], 1) + tuple(shape[2:]))
        return single if shape[1] == 1 else single.expand(shape).contiguous()


@dataclass
class WSquare(_ConstantDenominatorRule):
    """w²-rule: shares proportional to squared weights (Zennit also squares the bias)."""

    stabilizer: float = 1e-6

    def _weight(self, op):
        return op.weight ** 2

    def _bias(self, op):
        return op.bias ** 2 if op.bias is not None else None


@dataclass
class ZBox(Rule):
    """z^B (bounded input) rule for an input layer with ``low ≤ x ≤ high`` (scalars or tensors)."""

    low: object = None
    high: object = None
    stabilizer: float = 1e-6

    def __post_init__(self):
        if self.low is None or self.high is None:
            raise ConfigError("the z^B (box) rule needs both `low` and `high` input bounds")

    def prepare(self, op):
        w = op.weight
        pos, neg = w.clamp(min=0), w.clamp(max=0)
        return {"pos": pos, "neg": neg, "cache": {}, "stacked": op.stack_inputs([w, pos, neg]),
                "bias_pos": op.bias.clamp(min=0) if op.bias is not None else None,
                "bias_neg": op.bias.clamp(max=0) if op.bias is not None else None}

    def _bounds(self, op, params, x):
        key = (tuple(x.shape), x.dtype, x.device)
        bounds = params["cache"].get(key)
        if bounds is None:
            low, high = bound_like(self.low, x), bound_like(self.high, x)
            offset = (op.apply(low, params["pos"], params["bias_pos"])
                      + op.apply(high, params["neg"], params["bias_neg"]))
            bounds = (low, high, offset)
            if len(params["cache"]) > 8:  # a few batch shapes at most (e.g. the last batch)
                params["cache"].clear()
            params["cache"][key] = bounds
        return bounds

    def forward(self, op, params, x):
        low, high, offset = self._bounds(op, params, x)
        z = op.apply(x, op.weight, op.bias)
        return z, (x, low, high, stabilize(z - offset, self.stabilizer))

    def backward(self, op, params, saved, relevance):
        x, low, high, denominator = saved
        signal = relevance / denominator
        if params["stacked"] is not None:
            # Wᵀs, W⁺ᵀs and W⁻ᵀs in one transposed pass over the weights joined along the inputs
            shape = (x.shape[0],) + op.joined_input_shape(x.shape, 3)
            grad, grad_pos, grad_neg = op.split_inputs(
                op.transpose(signal, params["stacked"], shape), 3)
            return x * grad - low * grad_pos - high * grad_neg
        return (x * op.transpose(signal, op.weight, x.shape)
                - low * op.transpose(signal, params["pos"], x.shape)
                - high * op.transpose(signal, params["neg"], x.shape))


@dataclass
class Gradient(Rule):
    """The plain gradient of the layer (not an LRP rule; for user mappings and comparisons)."""

    applies_to = "any"


# ---------------------------------------------------------------------------------------------
# rules for parameter-free layers
# ---------------------------------------------------------------------------------------------


@dataclass
class Pass(Rule):
    """Pass-through: the relevance of the output is the relevance of the input (elementwise layers)."""

    applies_to = "any"


@dataclass
class Norm(Rule):
    """Proportional split ``R_i = x_i ∂z_j/∂x_i · R_j / (z_j + ε·sign(z_j))`` for parameter-free
    linear maps: average pooling, means and the sum of residual branches."""

    stabilizer: float = 1e-6
    applies_to = "any"


RULES = {
    "epsilon": Epsilon, "zplus": ZPlus, "z+": ZPlus, "alpha-beta": AlphaBeta,
    "alphabeta": AlphaBeta, "gamma": Gamma, "flat": Flat, "b": Flat, "wsquare": WSquare,
    "w2": WSquare, "zbox": ZBox, "zb": ZBox, "box": ZBox, "pass": Pass, "norm": Norm,
    "gradient": Gradient,
}


def make_rule(spec) -> Rule:
    """Turn a rule instance or a rule name (``"epsilon"``, ``"zplus"``, ...) into a rule."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str):
        name = spec.lower().replace("_", "-").replace("²", "2")
        if name in RULES:
            return RULES[name]()
        if name == "alpha1-beta0":
            return ZPlus()
        if name.startswith("alpha") and "-beta" in name:
            alpha, beta = name[5:].split("-beta")
            return AlphaBeta(alpha=float(alpha), beta=float(beta))
    raise ConfigError(
        f"unknown LRP rule {spec!r}; use a spray.lrp.rules.Rule instance or one of "
        f"{sorted(set(RULES))}")


__all__ = ["Rule", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "Flat", "WSquare", "ZBox",
           "Gradient", "Pass", "Norm", "RULES", "make_rule", "stabilize"]
