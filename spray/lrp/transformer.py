"""Transformer support: attention exposed as traceable products and attention-aware rules.

Rules (AttnLRP: Achtibat et al., ICML 2024; CP-LRP: Ali et al., ICML 2022)
-------------------------------------------------------------------------
The engine propagates *relevance* backwards (every rule node's backward returns the relevance
of its inputs).  For the pieces of a transformer block:

``LayerNormRule``
    LayerNorm ``y = (x − μ)/σ · w + b`` with the normalising scale ``σ`` held constant: the
    layer becomes the affine map ``x ↦ diag(w/σ)(I − 11ᵀ/N) x + b`` of each token, explained
    with the ε-rule (``R_x = x ⊙ Mᵀ(R_y / (y + ε·sign y))``).  The centring is linear, so no
    relevance is lost there; the bias keeps its share.  RMSNorm (no centring) is the same with
    ``μ = 0``, i.e. the identity up to the bias-free ε-split.
``ProductRule(shares)``
    bilinear product ``z = s·(a ⊗ b)`` (``Q·Kᵀ``, ``A·V``): the ε-rule applied to each factor
    with the other held constant, each result scaled by its share.  ``(½, ½)`` is AttnLRP's
    uniform rule; ``(0, 1)`` treats the first factor (the attention weights) as a constant
    (CP-LRP), which sends all relevance to the values.
``SoftmaxRule("attnlrp")``
    AttnLRP's softmax rule, the Taylor decomposition at the input with the bias term dropped:
    ``R_s = s ⊙ (R_A − A ⊙ Σ_j R_A)``.
``SoftmaxRule("constant")``
    CP-LRP: the attention weights are constants; no relevance enters the scores, so the query
    and key projections receive none.

Element-wise non-linearities (GELU, SiLU, tanh) use the identity rule (``Pass``) from the base
map of every composite.

Exposing ``nn.MultiheadAttention``
----------------------------------
PyTorch computes multi-head attention in one fused function whose products cannot be seen
by a tracer.  :func:`expose_attention` returns a *structural copy* of the model (containers
copied, parameters shared, the user's model untouched) in which every
``nn.MultiheadAttention`` is replaced by :class:`ExposedAttention`: the same computation
written with four :class:`AttentionProjection` layers (dense layers sharing the packed
weights), a :class:`QueryKeyProduct`, an :class:`AttentionSoftmax` and an
:class:`AttentionValueProduct`, each of which a composite maps to a rule.  Options the
exposed form does not implement (attention masks, ``add_bias_kv``, ``add_zero_attn``) raise
:class:`~spray.errors.ModelError` naming the module before any relevance is computed.

Functional attention (timm, hand-written modules) is exposed after tracing by
:func:`expose_functional_attention`: ``F.scaled_dot_product_attention`` without mask and the
written-out ``softmax(c · (q @ kᵀ)) @ v`` become the same product and softmax modules, and
``F.layer_norm`` an ``nn.LayerNorm``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from spray.errors import ConfigError, ModelError
from spray.lrp.ops import stabilize
from spray.lrp.rules import Rule

# ---------------------------------------------------------------------------------------------
# exposed attention: traceable modules the composites map to rules
# ---------------------------------------------------------------------------------------------


class AttentionProjection(nn.Linear):
    """A query/key/value/output projection of an exposed attention (a dense layer).

    Its own type lets a composite give the attention projections a rule of their own.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        # nn.Linear declares a Parameter, but allows None (bias=False) as here
        self.bias = (nn.Parameter(bias.detach(), requires_grad=False)  # type: ignore[assignment]
                     if bias is not None else None)


class QueryKeyProduct(nn.Module):
    """Attention scores ``scale · Q Kᵀ`` (per head, last two dimensions).

    ``scale=None``: ``1/√d`` from the queries' last dimension (as
    ``F.scaled_dot_product_attention``); ``transpose_b=False`` when the keys come transposed.
    """

    def __init__(self, scale: float | None, transpose_b: bool = True):
        super().__init__()
        self.scale, self.transpose_b = scale, transpose_b

    def forward(self, query, key):
        return product(query, key, resolve_scale(self.scale, query), self.transpose_b)


def resolve_scale(scale, query) -> float:
    """The scores' scale: ``scale``, or ``1/√d`` for ``None``."""
    return float(query.shape[-1]) ** -0.5 if scale is None else scale


class AttentionValueProduct(nn.Module):
    """Attention output ``A V`` (per head, last two dimensions)."""

    scale = 1.0

    def forward(self, attention, value):
        return product(attention, value, 1.0, False)


class AttentionSoftmax(nn.Module):
    """Softmax of the attention scores over the keys (last dimension)."""

    def forward(self, scores):
        return torch.softmax(scores, dim=-1)


def product(a, b, scale, transpose_b):
    """``scale · a bᵀ`` (``transpose_b``) or ``scale · a b`` over the last two dimensions."""
    out = torch.matmul(a, b.transpose(-2, -1) if transpose_b else b)
    return out * scale if scale != 1.0 else out


#: spray modules the tracer keeps as leaves (rule-carrying nodes of the graph)
LEAF_MODULES = (QueryKeyProduct, AttentionValueProduct, AttentionSoftmax, AttentionProjection)
PRODUCTS = (QueryKeyProduct, AttentionValueProduct)
LAYER_NORMS = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


class ExposedAttention(nn.Module):
    """``nn.MultiheadAttention`` (inference) written with traceable, rule-carrying pieces.

    Computes exactly what the wrapped module computes in eval mode for the options it supports
    (self- or cross-attention, packed or separate projection weights, ``batch_first`` either
    way, with or without biases); the attention weights it returns are ``None``.
    """

    def __init__(self, mha: nn.MultiheadAttention, name: str = ""):
        super().__init__()
        where = f"attention module '{name}' ({type(mha).__name__})"
        if mha.bias_k is not None or mha.bias_v is not None:
            raise ModelError(f"spray.lrp does not support {where} with add_bias_kv=True")
        if mha.add_zero_attn:
            raise ModelError(f"spray.lrp does not support {where} with add_zero_attn=True")
        self.where = where
        e, h = mha.embed_dim, mha.num_heads
        self.num_heads, self.head_dim, self.batch_first = h, e // h, mha.batch_first
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.split(e, dim=0)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = (mha.in_proj_bias.split(e, dim=0) if mha.in_proj_bias is not None
                  else (None, None, None))
        self.q_proj = AttentionProjection(weights[0], biases[0])
        self.k_proj = AttentionProjection(weights[1], biases[1])
        self.v_proj = AttentionProjection(weights[2], biases[2])
        self.out_proj = AttentionProjection(mha.out_proj.weight, mha.out_proj.bias)
        self.scores = QueryKeyProduct(float(self.head_dim) ** -0.5)
        self.softmax = AttentionSoftmax()
        self.mix = AttentionValueProduct()

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ModelError(f"spray.lrp does not support attention masks in {self.where}")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        attention = self.softmax(self.scores(q, k))
        mixed = self.mix(attention, v).transpose(1, 2)
        out = self.out_proj(mixed.reshape(mixed.size(0), mixed.size(1), -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _heads(self, x):
        """``(n, L, E)`` → ``(n, heads, L, E/heads)``."""
        return x.reshape(x.size(0), x.size(1), self.num_heads, self.head_dim).transpose(1, 2)


def expose_attention(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` with every ``nn.MultiheadAttention`` exposed.

    Only the containers on the way to an attention module are copied (shallowly: parameters,
    buffers and all other submodules are shared); ``model`` itself is returned when it holds no
    ``nn.MultiheadAttention``.
    """
    return _expose(model, "")


def _expose(module: nn.Module, name: str) -> nn.Module:
    if isinstance(module, nn.MultiheadAttention):
        return ExposedAttention(module, name)
    changed = {}
    for child_name, child in module._modules.items():
        if child is None:
            continue
        new = _expose(child, f"{name}.{child_name}" if name else child_name)
        if new is not child:
            changed[child_name] = new
    if not changed:
        return module
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._modules.update(changed)
    return clone


# ---------------------------------------------------------------------------------------------
# rules and their autograd functions (forward = layer, backward = rule)
# ---------------------------------------------------------------------------------------------


class ModuleRule(Rule):
    """A rule that replaces a whole (non-affine) module node with a rule node."""

    applies_to = "any"

    def node(self, module: nn.Module, where: str) -> nn.Module:
        raise NotImplementedError


class _ProductFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, transpose_b, shares, stabilizer):
        z = product(a, b, scale, transpose_b)
        ctx.saved = (a, b, stabilize(z, stabilizer))
        ctx.scale, ctx.transpose_b, ctx.shares = scale, transpose_b, shares
        return z

    @staticmethod
    def backward(ctx, relevance):
        (a, b, denominator), ctx.saved = ctx.saved, None
        signal = relevance / denominator
        share_a, share_b = ctx.shares
        grad_a = grad_b = None
        # the scale and the share multiply the (smaller) factor-shaped results, in place
        if share_a and ctx.needs_input_grad[0]:
            factor = b if ctx.transpose_b else b.transpose(-2, -1)
            grad_a = torch.matmul(signal, factor).mul_(a).mul_(share_a * ctx.scale)
        if share_b and ctx.needs_input_grad[1]:
            if ctx.transpose_b:   # z = a bᵀ: ∂z/∂b = signalᵀ a
                grad_b = torch.matmul(signal.transpose(-2, -1), a)
            else:                 # z = a b: ∂z/∂b = aᵀ signal
                grad_b = torch.matmul(a.transpose(-2, -1), signal)
            grad_b = grad_b.mul_(b).mul_(share_b * ctx.scale)
        return grad_a, grad_b, None, None, None, None


class _ProductNode(nn.Module):
    def __init__(self, scale, transpose_b, shares, stabilizer):
        super().__init__()
        self.scale, self.transpose_b = scale, transpose_b
        self.shares, self.stabilizer = shares, stabilizer

    def forward(self, a, b):
        if self.shares[0] == 0:
            a = a.detach()  # a constant: no relevance flows into it (nor into what made it)
        if self.shares[1] == 0:
            b = b.detach()
        return _ProductFunction.apply(a, b, resolve_scale(self.scale, a), self.transpose_b,
                                      self.shares, self.stabilizer)


@dataclass
class ProductRule(ModuleRule):
    """Bilinear product: ε-rule per factor, scaled by ``shares`` (``(½, ½)``: uniform)."""

    first: float = 0.5
    second: float = 0.5
    stabilizer: float = 1e-6

    def node(self, module, where):
        if not isinstance(module, PRODUCTS):
            raise ConfigError(f"rule ProductRule cannot be applied to {where}: it needs an "
                              "attention product")
        return _ProductNode(module.scale, getattr(module, "transpose_b", False),
                            (self.first, self.second), self.stabilizer)


class _SoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores):
        attention = torch.softmax(scores, dim=-1)
        ctx.saved = (scores, attention)
        return attention

    @staticmethod
    def backward(ctx, relevance):
        (scores, attention), ctx.saved = ctx.saved, None
        return scores * (relevance - attention * relevance.sum(-1, keepdim=True))


class _SoftmaxNode(nn.Module):
    def __init__(self, constant: bool):
        super().__init__()
        self.constant = constant

    def forward(self, scores):
        if self.constant:
            return torch.softmax(scores.detach(), dim=-1)
        return _SoftmaxFunction.apply(scores)


@dataclass
class SoftmaxRule(ModuleRule):
    """Softmax of the attention scores: ``"attnlrp"`` (AttnLRP's rule) or ``"constant"``
    (CP-LRP: attention weights as constants, no relevance to the scores)."""

    mode: str = "attnlrp"

    def __post_init__(self):
        if self.mode not in ("attnlrp", "constant"):
            raise ConfigError(f"softmax rule mode must be 'attnlrp' or 'constant', "
                              f"got {self.mode!r}")

    def node(self, module, where):
        if not isinstance(module, (AttentionSoftmax, nn.Softmax)):
            raise ConfigError(f"rule SoftmaxRule cannot be applied to {where}")
        if isinstance(module, nn.Softmax) and module.dim not in (-1, None):
            raise ModelError(f"spray.lrp supports a softmax over the last dimension only; "
                             f"{where} uses dim={module.dim}")
        return _SoftmaxNode(self.mode == "constant")


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, centred, stabilizer):
        if centred:
            centre = x - x.mean(dim=-1, keepdim=True)
            scale = (centre.pow(2).mean(dim=-1, keepdim=True) + eps).rsqrt()
        else:
            centre = x
            scale = (x.pow(2).mean(dim=-1, keepdim=True) + eps).rsqrt()
        y = centre * scale
        if weight is not None:
            y.mul_(weight)
        if bias is not None:
            y.add_(bias)
        ctx.saved = (x, scale, weight, stabilize(y, stabilizer))
        ctx.centred = centred
        return y

    @staticmethod
    def backward(ctx, relevance):
        (x, scale, weight, denominator), ctx.saved = ctx.saved, None
        signal = relevance / denominator
        if weight is not None:
            signal.mul_(weight)
        signal.mul_(scale)
        if ctx.centred:
            signal.sub_(signal.mean(dim=-1, keepdim=True))
        return signal.mul_(x), None, None, None, None, None


class _LayerNormNode(nn.Module):
    def __init__(self, module, stabilizer):
        super().__init__()
        self.centred = isinstance(module, nn.LayerNorm)
        self.eps = module.eps  # None (RMSNorm): the machine epsilon of the input's dtype
        self.weight = module.weight.detach() if module.weight is not None else None
        bias = getattr(module, "bias", None)
        self.bias = bias.detach() if bias is not None else None
        self.stabilizer = stabilizer

    def forward(self, x):
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _LayerNormFunction.apply(x, self.weight, self.bias, eps, self.centred,
                                        self.stabilizer)


@dataclass
class LayerNormRule(ModuleRule):
    """LayerNorm/RMSNorm with the normalising scale held constant, ε-rule on the rest."""

    stabilizer: float = 1e-6

    def node(self, module, where):
        if not isinstance(module, LAYER_NORMS):
            raise ConfigError(f"rule LayerNormRule cannot be applied to {where}")
        if len(tuple(module.normalized_shape)) != 1:
            raise ModelError(f"spray.lrp supports normalisation over the last dimension only; "
                             f"{where} normalises over {tuple(module.normalized_shape)}")
        return _LayerNormNode(module, self.stabilizer)


__all__ = ["ExposedAttention", "AttentionProjection", "QueryKeyProduct",
           "AttentionValueProduct", "AttentionSoftmax", "expose_attention", "ProductRule",
           "SoftmaxRule", "LayerNormRule", "ModuleRule", "LEAF_MODULES", "LAYER_NORMS"]
