"""Attention written as functions, exposed after tracing so that the rules can see it.

:func:`expose_functional_attention` rewrites a traced graph: ``F.scaled_dot_product_attention``
without mask and the written-out ``softmax(c · (q @ kᵀ)) @ v`` become the product and softmax
modules of :mod:`spray.lrp.transformer`, and ``F.layer_norm`` an ``nn.LayerNorm``. Attention
in any other form (einsum, masks, causal products) is named by :func:`attention_node_owner`
so that the canonizer refuses it before any relevance is computed.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from spray.lrp.transformer import (
    AttentionSoftmax,
    AttentionValueProduct,
    QueryKeyProduct,
)

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
