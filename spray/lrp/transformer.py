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
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from spray.errors import ConfigError, ModelError
from spray.lrp.rules import Rule, stabilize

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


# ---------------------------------------------------------------------------------------------
# functional attention and normalisation in a traced graph (timm, hand-written attention)
# ---------------------------------------------------------------------------------------------

_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax}
_MATMUL_FUNCTIONS = {torch.matmul, operator.matmul}
_DROPOUT_FUNCTIONS = {F.dropout}


def expose_functional_attention(gm: fx.GraphModule) -> None:
    """Rewrite functional attention and LayerNorm in ``gm`` into rule-carrying modules.

    * ``F.scaled_dot_product_attention(q, k, v)`` without mask, dropout or causal flag becomes
      :class:`QueryKeyProduct` → :class:`AttentionSoftmax` → :class:`AttentionValueProduct`;
    * the written-out form ``softmax(s · (q @ kᵀ), dim=-1) [dropout] @ v`` (constant scalings
      of the scores allowed) becomes the same three modules;
    * ``F.layer_norm`` over the last dimension becomes an ``nn.LayerNorm`` sharing the
      parameters, named like the module that called it (e.g. timm's ``LayerNorm``);
    * timm's mask helpers called without a mask are dropped.

    The new modules are registered under the path of the module that computed the operation,
    so that composites can map them by name.  Anything else is left for
    :func:`spray.lrp.canonizers.check_attention` to refuse.
    """
    names: dict = {}
    for node in list(gm.graph.nodes):
        if getattr(node, "_erased", False) or node.op not in ("call_function", "call_method"):
            continue
        if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            _rewrite_sdpa(gm, node, names)
        elif node.op == "call_function" and node.target is F.layer_norm:
            _rewrite_layer_norm(gm, node, names)
        elif _is_timm_mask_helper(node):
            _drop_mask_helper(gm, node)
    for node in list(gm.graph.nodes):
        if _is_softmax(node):
            _rewrite_written_attention(gm, node, names)
    gm.graph.lint()
    gm.recompile()


def _register(gm, node, module: nn.Module, suffix: str, names: dict) -> str:
    """Add ``module`` under the path of the module that created ``node``; return its name."""
    path = _owner_path(node)
    base = f"{path}.{suffix}" if path else suffix
    count = names.get(base, 0)
    names[base] = count + 1
    name = base if count == 0 else f"{base}_{count}"
    gm.add_submodule(name, module)
    return name


def _owner_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, entry = list(stack.items())[-1]
    return entry[0] if isinstance(entry, tuple) and isinstance(entry[0], str) else path


def _as_module_call(node, name: str, args: tuple) -> None:
    node.op, node.target, node.args, node.kwargs = "call_module", name, args, {}


def _rewrite_sdpa(gm, node, names) -> None:
    q, k, v = (list(node.args) + [None, None, None])[:3]
    kwargs = dict(node.kwargs)
    for key in ("query", "key", "value"):
        if key in kwargs:
            q, k, v = kwargs.get("query", q), kwargs.get("key", k), kwargs.get("value", v)
    extra = list(node.args[3:])
    mask = _default(kwargs.get("attn_mask", extra[0] if extra else None))
    dropout = _default(kwargs.get("dropout_p", extra[1] if len(extra) > 1 else 0.0))
    causal = _default(kwargs.get("is_causal", extra[2] if len(extra) > 2 else False))
    scale = _default(kwargs.get("scale", extra[3] if len(extra) > 3 else None))
    if mask is not None or dropout or causal or kwargs.get("enable_gqa", False) or not all(
            isinstance(t, fx.Node) for t in (q, k, v)) or isinstance(scale, fx.Node):
        return  # left to check_attention: refused by name
    scores_name = _register(gm, node, QueryKeyProduct(scale), "scores", names)
    softmax_name = _register(gm, node, AttentionSoftmax(), "softmax", names)
    mix_name = _register(gm, node, AttentionValueProduct(), "mix", names)
    with gm.graph.inserting_before(node):
        scores = gm.graph.call_module(scores_name, (q, k))
        attention = gm.graph.call_module(softmax_name, (scores,))
    for new in (scores, attention):
        new.meta = dict(node.meta)
    _as_module_call(node, mix_name, (attention, v))


def _default(value):
    """A forward argument the model is called without (a placeholder with a default, such as
    timm's ``attn_mask=None``) stands for its default; anything else is returned as it is."""
    if isinstance(value, fx.Node) and value.op == "placeholder" and value.args:
        return value.args[0]
    return value


def _rewrite_layer_norm(gm, node, names) -> None:
    args = list(node.args) + [None] * 5
    x, shape = args[0], node.kwargs.get("normalized_shape", args[1])
    weight = node.kwargs.get("weight", args[2])
    bias = node.kwargs.get("bias", args[3])
    eps = node.kwargs.get("eps", args[4] if args[4] is not None else 1e-5)
    shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
    params = [_attribute(gm, t) for t in (weight, bias)]
    if len(shape) != 1 or not isinstance(shape[0], int) or any(
            t is not None and p is None for t, p in zip((weight, bias), params)):
        return  # left as it is: the guard refuses it
    norm = nn.LayerNorm(shape, eps=eps, elementwise_affine=weight is not None,
                        bias=bias is not None, device=_device(params), dtype=_dtype(params))
    with torch.no_grad():
        if params[0] is not None:
            norm.weight = nn.Parameter(params[0].detach(), requires_grad=False)
        if params[1] is not None:
            norm.bias = nn.Parameter(params[1].detach(), requires_grad=False)
    _as_module_call(node, _register(gm, node, norm, "layer_norm", names), (x,))


def _attribute(gm, value):
    """The tensor a ``get_attr`` node refers to (``None`` for anything else)."""
    if isinstance(value, fx.Node) and value.op == "get_attr":
        target = gm
        for part in str(value.target).split("."):
            target = getattr(target, part)
        return target
    return None


def _device(params):
    return next((p.device for p in params if p is not None), None)


def _dtype(params):
    return next((p.dtype for p in params if p is not None), None)


def _is_timm_mask_helper(node) -> bool:
    target = node.target
    return (node.op == "call_function" and getattr(target, "__module__", "").startswith("timm.")
            and getattr(target, "__name__", "") in ("resolve_self_attn_mask", "maybe_add_mask"))


def _drop_mask_helper(gm, node) -> None:
    """timm's ``resolve_self_attn_mask(n, scores, None, False)`` is ``None`` and
    ``maybe_add_mask(scores, None)`` is ``scores``: remove them when no mask is given."""
    if node.target.__name__ == "resolve_self_attn_mask":
        args = [_default(a) for a in list(node.args) + [None, False]]
        if args[2] is None and not args[3] and all(
                user.op == "call_function" and _is_timm_mask_helper(user)
                and user.target.__name__ == "maybe_add_mask" and user.args[1] is node
                for user in node.users):
            for user in list(node.users):
                user.replace_all_uses_with(user.args[0])
                gm.graph.erase_node(user)
            gm.graph.erase_node(node)
    elif len(node.args) > 1 and _default(node.args[1]) is None:
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)


def _is_softmax(node) -> bool:
    is_softmax = ((node.op == "call_method" and node.target == "softmax")
                  or (node.op == "call_function" and node.target in _SOFTMAX_FUNCTIONS))
    if not is_softmax:
        return False
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return dim == -1 and not node.kwargs.get("dtype")


def _is_matmul(node) -> bool:
    """A matrix product of two computed tensors (a product with a parameter is a dense layer
    written as a function, which has no rule here: it stays refused)."""
    return ((node.op == "call_function" and node.target in _MATMUL_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("matmul", "__matmul__"))) and len(
        node.args) == 2 and all(isinstance(a, fx.Node) and a.op != "get_attr" for a in node.args)


def _is_constant_scaling(node) -> bool:
    if node.op == "call_function" and node.target in (operator.mul, operator.truediv):
        nodes = [a for a in node.args if isinstance(a, fx.Node)]
        return len(nodes) == 1 and (node.target is operator.mul or node.args[0] is nodes[0])
    return False


def _is_dropout(gm, node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (nn.Dropout, nn.Identity))
    return node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS


def _rewrite_written_attention(gm, softmax, names) -> None:
    """``softmax(c · (a @ b)) [dropout] @ v`` → scores, softmax and mix modules."""
    source = softmax.args[0] if softmax.args else softmax.kwargs.get("input")
    while isinstance(source, fx.Node) and _is_constant_scaling(source) and len(source.users) == 1:
        source = next(a for a in source.args if isinstance(a, fx.Node))
    if not (isinstance(source, fx.Node) and _is_matmul(source) and len(source.users) == 1):
        return
    follower = softmax
    while len(follower.users) == 1 and _is_dropout(gm, next(iter(follower.users))):
        follower = next(iter(follower.users))
    mixes = list(follower.users)
    if len(mixes) != 1 or not _is_matmul(mixes[0]) or mixes[0].args[0] is not follower:
        return
    mix = mixes[0]
    scores = _register(gm, source, QueryKeyProduct(1.0, transpose_b=False), "scores", names)
    _as_module_call(source, scores, tuple(source.args))
    probabilities = _register(gm, softmax, AttentionSoftmax(), "softmax", names)
    _as_module_call(softmax, probabilities, (source if softmax.args[0] is source
                                             else softmax.args[0],))
    _as_module_call(mix, _register(gm, mix, AttentionValueProduct(), "mix", names),
                    tuple(mix.args))


# ---------------------------------------------------------------------------------------------
# unsupported attention: found before any relevance is computed
# ---------------------------------------------------------------------------------------------

#: tensor operations that make attention (or any product of two computed tensors) outside the
#: exposed modules; spray has no rule for them in an arbitrary place of the graph
ATTENTION_FUNCTIONS = {
    torch.matmul, torch.bmm, torch.baddbmm, torch.einsum, F.scaled_dot_product_attention,
    F.multi_head_attention_forward, F.softmax, torch.softmax,
}
ATTENTION_METHODS = {"matmul", "bmm", "baddbmm", "softmax", "__matmul__"}


def attention_node_owner(node) -> tuple[str, str]:
    """``(module path, type name)`` of the module whose forward created ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<model>", "forward"
    path, entry = list(stack.items())[-1]
    kind = entry[1] if isinstance(entry, tuple) else entry
    name = entry[0] if isinstance(entry, tuple) and isinstance(entry[0], str) else path
    type_name = getattr(kind, "__qualname__", None) or str(kind)
    module = getattr(kind, "__module__", "")
    return name, f"{module}.{type_name}" if module else type_name


__all__ = ["ExposedAttention", "AttentionProjection", "QueryKeyProduct",
           "AttentionValueProduct", "AttentionSoftmax", "expose_attention", "ProductRule",
           "SoftmaxRule", "LayerNormRule", "ModuleRule", "LEAF_MODULES", "LAYER_NORMS",
           "expose_functional_attention"]
