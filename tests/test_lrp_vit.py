"""Attention-aware LRP: torchvision VisionTransformer and a mixed CNN + attention model.

Conservation and rule identities run everywhere; the comparison with LXT (AttnLRP / CP-LRP,
``pip install --no-deps lxt==2.1`` plus ``transformers<5`` and Zennit) is marked ``peers``.
LXT patches torch and Zennit classes process-wide; :func:`lxt_patched` restores them.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spray.lrp as lrp
from spray.errors import DataError, ModelError
from spray.lrp import Epsilon, Gamma
from spray.lrp.composites import transformer_composite
from spray.lrp.transformer import ExposedAttention, expose_attention

torchvision = pytest.importorskip("torchvision")
from torchvision.models import VisionTransformer  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def make_vit(dtype=torch.float64, biases=True, seed=0, layers=2, width=32):
    """A small torchvision ViT (28×28, patch 7, 2 layers, width 32) with random weights.

    torchvision initialises the head, class token and biases to zero; they are randomised so
    that every path carries relevance.  ``biases=False`` zeroes biases, class token and
    position embedding (nothing then absorbs relevance).
    """
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=28, patch_size=7, num_layers=layers, num_heads=4,
                              hidden_dim=width, mlp_dim=2 * width, num_classes=10)
    with torch.no_grad():
        for name, param in model.named_parameters():
            absorbing = (name.endswith("bias") or "class_token" in name
                         or "pos_embedding" in name)
            if "heads" in name or absorbing:
                param.normal_(0, 0.3)
            if absorbing and not biases:
                param.zero_()
    return model.eval().to(dtype)


class MixedNet(nn.Module):
    """Convolutions and max pooling, then tokens through a post-norm attention block
    (``nn.MultiheadAttention`` with ``batch_first=False``), mean over tokens, dense head."""

    def __init__(self, bias=True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2))
        self.attention = nn.MultiheadAttention(16, 2, bias=bias)
        self.norm = nn.LayerNorm(16, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(16, 32, bias=bias), nn.GELU(),
                                 nn.Linear(32, 16, bias=bias))
        self.head = nn.Linear(16, 5, bias=bias)

    def forward(self, x):
        tokens = self.features(x).flatten(2).permute(2, 0, 1)       # (L, n, C)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm(tokens + attended)
        tokens = tokens + self.mlp(tokens)
        return self.head(tokens.mean(dim=0))


def make_mixed(dtype=torch.float64, bias=True, seed=0):
    torch.manual_seed(seed)
    model = MixedNet(bias)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.2, 0.2)
    return model.eval().to(dtype)


def inputs(n=4, dtype=torch.float64, size=28, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator).to(dtype)


def relative_error(a, b):
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


# ---------------------------------------------------------------------------------------------
# engine behaviour
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_vit_maps_have_input_shape_and_keep_the_model(composite):
    model = make_vit()
    x = inputs()
    relevance, logits = lrp.attribute(model, x, "prediction", composite, return_logits=True)
    assert relevance.shape == x.shape and relevance.dtype == x.dtype
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    assert torch.allclose(logits, model(x))
    # the user's model keeps its fused attention: exposure works on a structural copy
    kinds = [type(m) for m in model.modules()]
    assert nn.MultiheadAttention in kinds and ExposedAttention not in kinds


@pytest.mark.parametrize("factory", [make_vit, make_mixed])
def test_exposed_attention_computes_the_same_function(factory):
    model = factory()
    size = 28 if factory is make_vit else 16
    x = inputs(size=size)
    exposed = expose_attention(model)
    assert exposed is not model
    assert torch.allclose(exposed(x), model(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("factory,size", [(make_vit, 28), (make_mixed, 16)])
def test_cp_lrp_conserves_relevance_without_biases(factory, size):
    """Attention weights constant, no biases, tiny ε: input relevance sums to the logit."""
    model = factory(biases=False) if factory is make_vit else factory(bias=False)
    x = inputs(size=size)
    relevance, logits = lrp.attribute(model, x, "prediction", "cp-lrp", return_logits=True,
                                      epsilon=1e-12, stabilizer=1e-12)
    explained = logits.max(dim=1).values
    assert torch.allclose(relevance.flatten(1).sum(1), explained, rtol=1e-8, atol=1e-10)


def test_attention_rules_differ_and_uniform_rule_halves_values():
    """AttnLRP sends half of A·V to the values, CP-LRP all of it: the maps differ."""
    model = make_vit()
    x = inputs()
    attn = lrp.attribute(model, x, "prediction", "attn-lrp")
    cp = lrp.attribute(model, x, "prediction", "cp-lrp")
    assert relative_error(attn, cp) > 1e-2


class ScaleGradient(torch.autograd.Function):
    """Identity whose gradient is divided by ``factor`` (the uniform rule as gradient × input)."""

    @staticmethod
    def forward(ctx, t, factor):
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad / ctx.factor, None


def rule_modified(q, k, v, rules):
    """Queries, keys and values with the gradient × input form of the attention rules."""
    if rules == "cp":
        return q.detach(), k.detach(), v
    return ScaleGradient.apply(q, 4.0), ScaleGradient.apply(k, 4.0), ScaleGradient.apply(v, 2.0)


def reference_layer_norm(self, t):
    centre = t - t.mean(-1, keepdim=True)
    y = centre / (centre.pow(2).mean(-1, keepdim=True) + self.eps).sqrt().detach()
    return y * self.weight + (self.bias if self.bias is not None else 0)


def gradient_times_input_reference(model, x, targets, rules, extra=None):
    """An independent float64 reference: the AttnLRP / CP-LRP rules written as gradient ×
    input identities on a plain autograd forward (stop-gradient and gradient scaling).
    ``extra``: more ``{class: forward}`` patches (e.g. timm's attention)."""

    def attention(self, query, key, value, **kwargs):
        e, h = self.embed_dim, self.num_heads
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        wq, wk, wv = self.in_proj_weight.split(e)
        bq, bk, bv = (self.in_proj_bias.split(e) if self.in_proj_bias is not None
                      else (None,) * 3)

        def heads(t):
            return t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2)

        q, k, v = rule_modified(heads(F.linear(query, wq, bq)), heads(F.linear(key, wk, bk)),
                                heads(F.linear(value, wv, bv)), rules)
        a = torch.softmax(q @ k.transpose(-2, -1) * (e // h) ** -0.5, dim=-1)
        out = (a @ v).transpose(1, 2).reshape(q.shape[0], -1, e)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return (out if self.batch_first else out.transpose(0, 1)), None

    gelu = nn.GELU.forward
    patches = {nn.LayerNorm: reference_layer_norm, nn.MultiheadAttention: attention,
               nn.GELU: lambda self, t: t * (gelu(self, t) / t).detach(), **(extra or {})}
    saved = {cls: cls.__dict__.get("forward") for cls in patches}
    for cls, forward in patches.items():
        cls.forward = forward
    try:
        x = x.clone().requires_grad_(True)
        model(x).gather(1, targets[:, None]).sum().backward()
    finally:
        for cls, forward in saved.items():
            if forward is None:
                del cls.forward
            else:
                cls.forward = forward
    return (x * x.grad).detach()


@pytest.mark.parametrize("rules", ["attn", "cp"])
@pytest.mark.parametrize("factory,size", [(make_vit, 28), (make_mixed, 16)])
def test_rules_match_gradient_times_input_identities(rules, factory, size):
    """With LRP-0 on every dense layer (no bias-free assumption: biases absorb their share),
    spray's relevance equals the gradient × input of the rule-modified forward pass."""
    model = factory()
    x = inputs(size=size)
    targets = model(x).argmax(1)
    reference = gradient_times_input_reference(model, x, targets, rules)
    composite = transformer_composite(Epsilon(0.0), softmax="attnlrp" if rules == "attn"
                                      else "constant", stabilizer=1e-12)
    relevance = lrp.attribute(model, x, targets, composite)
    assert relative_error(relevance, reference) <= 1e-6


def test_float32_agrees_with_float64():
    model64 = make_vit()
    x = inputs()
    r64 = lrp.attribute(model64, x, "prediction", "attn-lrp")
    model32 = make_vit(torch.float32)
    r32 = lrp.attribute(model32, x.float(), "prediction", "attn-lrp")
    assert relative_error(r32.double(), r64) <= 1e-4


# ---------------------------------------------------------------------------------------------
# unsupported attention: refused before any relevance is computed
# ---------------------------------------------------------------------------------------------


class HandMadeAttention(nn.Module):
    """Attention written out: ``softmax(q kᵀ / √d) @ v`` (supported), or with the scores from
    ``torch.einsum`` (refused)."""

    def __init__(self, dim, einsum=False):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.einsum = einsum

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = (torch.einsum("bqd,bkd->bqk", q, k) if self.einsum
                  else q @ k.transpose(-2, -1) / 8 ** 0.5)
        return torch.softmax(scores, dim=-1) @ v


class HandMadeNet(nn.Module):
    def __init__(self, einsum=False):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.block = HandMadeAttention(8, einsum)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(self.embed(x)).mean(dim=1))


def test_custom_attention_is_refused_naming_module_and_type():
    with pytest.raises(ModelError, match=r"'einsum' computed in module 'block' \(.*HandMadeAttention\)"):
        lrp.prepare(HandMadeNet(einsum=True).eval(), "attn-lrp")


def test_written_out_attention_is_exposed():
    """``softmax(q @ kᵀ / √d) @ v`` becomes scores, softmax and mix modules under the module's
    path; CP-LRP then conserves the logit without biases."""
    torch.manual_seed(0)
    model = HandMadeNet().double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
    program = lrp.prepare(model, "cp-lrp")
    assert {"block.scores", "block.softmax", "block.mix"} <= set(dict(program.gm.named_modules()))
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    relevance, logits = lrp.attribute(model, x, "prediction", "cp-lrp", return_logits=True,
                                      epsilon=1e-12, stabilizer=1e-12)
    assert torch.allclose(logits, model(x))
    assert torch.allclose(relevance.flatten(1).sum(1), logits.max(1).values, rtol=1e-8)


def test_masked_sdpa_is_refused():
    """``F.scaled_dot_product_attention`` is exposed without mask; a causal one is refused."""
    class SDPA(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x, is_causal=True)

    model = nn.Sequential(nn.Linear(4, 4), SDPA(), nn.Flatten(), nn.Linear(12, 2)).eval()
    with pytest.raises(ModelError, match=r"'1' \(.*SDPA\)"):
        lrp.prepare(model, "cp-lrp")


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_unsupported_attention_options_are_refused(option):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True, **{option: True})
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attention(x, x, x)[0].mean(dim=1))

    with pytest.raises(ModelError, match=rf"'attention' \(MultiheadAttention\).*{option}"):
        lrp.prepare(Net().eval(), "attn-lrp")


def test_attention_masks_are_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            mask = torch.zeros(3, 3)
            return self.head(self.attention(x, x, x, attn_mask=mask)[0].mean(dim=1))

    with pytest.raises(ModelError, match="attention masks"):
        lrp.prepare(Net().eval(), "attn-lrp")


def test_transformer_encoder_layer_is_refused_by_name():
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
                          nn.Flatten(), nn.Linear(24, 2)).eval()
    with pytest.raises(ModelError, match=r"'0' \(TransformerEncoderLayer\)"):
        lrp.prepare(model, "attn-lrp")


# ---------------------------------------------------------------------------------------------
# LXT, the reference implementation of AttnLRP and CP-LRP
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def lxt_patched(patch_map=None):
    """Apply LXT's torchvision-ViT patches (and its Zennit patch) and undo them afterwards."""
    pytest.importorskip("zennit")
    pytest.importorskip("lxt.efficient", exc_type=ImportError)
    import zennit.core
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from torchvision.models import vision_transformer

    classes = [nn.GELU, nn.LayerNorm, nn.MultiheadAttention, zennit.core.BasicHook]
    saved = [(cls, dict(vars(cls))) for cls in classes]
    try:
        monkey_patch(vision_transformer, patch_map)
        monkey_patch_zennit()
        yield
    finally:
        for cls, attributes in saved:
            for name in [n for n in vars(cls) if n not in attributes]:
                delattr(cls, name)
            for name in ("forward", "backward"):
                if name in attributes:
                    setattr(cls, name, attributes[name])


def lxt_attnlrp_map():
    """LXT's AttnLRP patch applied to torchvision attention: LXT ships CP-LRP only for
    torchvision's ViT; its AttnLRP attention wrapper (uniform rule through gradient division
    of queries, keys and values) is applied here to ``nn.MultiheadAttention``'s products."""
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method
    from lxt.efficient.rules import divide_gradient

    def attention(self, query, key, value, **kwargs):
        e, h = self.embed_dim, self.num_heads
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        wq, wk, wv = self.in_proj_weight.split(e)
        bq, bk, bv = self.in_proj_bias.split(e)

        def heads(t):
            return t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2)

        q = divide_gradient(heads(F.linear(query, wq, bq)), 4)
        k = divide_gradient(heads(F.linear(key, wk, bk)), 4)
        v = divide_gradient(heads(F.linear(value, wv, bv)), 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = F.linear(out.transpose(1, 2).reshape(q.shape[0], -1, e), self.out_proj.weight,
                       self.out_proj.bias)
        return (out if self.batch_first else out.transpose(0, 1)), None

    return {nn.GELU: functools.partial(patch_method, non_linear_forward, keep_original=True),
            nn.LayerNorm: functools.partial(patch_method, layer_norm_forward),
            nn.MultiheadAttention: functools.partial(patch_method, attention)}


def lxt_relevance(model, x, targets, linear, conv, patch_map=None):
    """Relevance of LXT (efficient gradient × input implementation) with Zennit rules."""
    from zennit.composites import LayerMapComposite

    with lxt_patched(patch_map):
        composite = LayerMapComposite([(nn.Linear, linear), (nn.Conv2d, conv)])
        x = x.clone().requires_grad_(True)
        with composite.context(model) as modified:
            modified(x).gather(1, targets[:, None]).sum().backward()
    return (x * x.grad).detach()


def zennit_rule(kind, value):
    import zennit.rules

    return zennit.rules.Epsilon(value) if kind == "epsilon" else zennit.rules.Gamma(value)


def spray_rule(kind, value):
    return Epsilon(value) if kind == "epsilon" else Gamma(value)


#: (linear rule, parameter, conv rule, parameter)
LXT_RULES = [("epsilon", 1e-6, "epsilon", 1e-6), ("gamma", 0.25, "gamma", 0.5),
             ("epsilon", 1e-2, "gamma", 0.25)]


@pytest.mark.peers
@pytest.mark.parametrize("mode", ["cp", "attn"])
@pytest.mark.parametrize("rules", LXT_RULES, ids=lambda r: f"{r[0]}{r[1]}-{r[2]}{r[3]}")
@pytest.mark.parametrize("factory,size", [(make_vit, 28), (make_mixed, 16)])
def test_agrees_with_lxt(mode, rules, factory, size):
    """Same model, inputs, rules: per-sample relative L2 ≤ 1e-5 in float64.

    LXT applies Zennit's rules only to modules that are *called*; the fused attention calls
    its projections as functions, so they get the plain gradient (LRP-0): spray's composite
    maps the attention projections to ε = 0 to compare like with like.  LXT routes residual
    sums and LayerNorm by the exact gradient; spray stabilises them with ``stabilizer``, here
    1e-12 (see ``test_default_stabilizer_against_lxt`` for the default).
    """
    model = factory()
    x = inputs(size=size)
    targets = model(x).argmax(1)
    linear, lin_value, conv, conv_value = rules
    reference = lxt_relevance(model, x, targets, zennit_rule(linear, lin_value),
                              zennit_rule(conv, conv_value),
                              None if mode == "cp" else lxt_attnlrp_map())
    composite = transformer_composite(spray_rule(linear, lin_value), spray_rule(conv, conv_value),
                                      projections=Epsilon(0.0),
                                      softmax="constant" if mode == "cp" else "attnlrp",
                                      stabilizer=1e-12)
    relevance = lrp.attribute(model, x, targets, composite)
    assert relative_error(relevance, reference) <= 1e-5


@pytest.mark.peers
def test_agrees_with_lxt_in_float32():
    model = make_vit(torch.float32)
    x = inputs(dtype=torch.float32)
    targets = model(x).argmax(1)
    import zennit.rules

    reference = lxt_relevance(model, x, targets, zennit.rules.Epsilon(1e-6),
                              zennit.rules.Epsilon(1e-6))
    composite = transformer_composite(Epsilon(1e-6), projections=Epsilon(0.0),
                                      softmax="constant", stabilizer=1e-12)
    assert relative_error(lrp.attribute(model, x, targets, composite), reference) <= 1e-4


def per_sample_error(a, b):
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


@pytest.mark.peers
def test_float32_rounding_no_worse_than_lxts():
    """In float32, spray's and LXT's maps of a 4-layer ViT differ by more than 1e-4 on the
    worst samples, and so does each from its own float64 map: ε-rule neurons with tiny
    denominators amplify float32 rounding in both implementations.  spray's float32 maps are
    as close to the float64 maps (the same in both, ≤ 1e-5) as LXT's float32 maps are."""
    import zennit.rules

    x = inputs(64)
    targets = make_vit(layers=4, width=64)(x).argmax(1)
    maps = {}
    for dtype in (torch.float64, torch.float32):
        model = make_vit(dtype, layers=4, width=64)
        composite = transformer_composite(Epsilon(1e-6), projections=Epsilon(0.0),
                                          softmax="constant", stabilizer=1e-12)
        maps["spray", dtype] = lrp.attribute(model, x.to(dtype), targets, composite).double()
        maps["lxt", dtype] = lxt_relevance(model, x.to(dtype), targets,
                                           zennit.rules.Epsilon(1e-6),
                                           zennit.rules.Epsilon(1e-6)).double()
    assert relative_error(maps["spray", torch.float64], maps["lxt", torch.float64]) <= 1e-5
    ours = per_sample_error(maps["spray", torch.float32], maps["spray", torch.float64])
    theirs = per_sample_error(maps["lxt", torch.float32], maps["lxt", torch.float64])
    assert theirs.max() > 1e-4  # the reference itself: float32 rounding, not a rule difference
    assert ours.max() <= 1.5 * theirs.max() and ours.median() <= 1.5 * theirs.median()


@pytest.mark.peers
def test_default_stabilizer_against_lxt():
    """spray's default ε = 1e-6 on residual sums and LayerNorm (LXT: none) moves the maps by
    far less than the maps themselves, yet measurably: documented in docs/lrp.md."""
    model = make_vit()
    x = inputs()
    targets = model(x).argmax(1)
    import zennit.rules

    reference = lxt_relevance(model, x, targets, zennit.rules.Epsilon(1e-6),
                              zennit.rules.Epsilon(1e-6))
    default = transformer_composite(Epsilon(1e-6), projections=Epsilon(0.0), softmax="constant")
    error = relative_error(lrp.attribute(model, x, targets, default), reference)
    assert 1e-8 < error <= 1e-2


# ---------------------------------------------------------------------------------------------
# relevance health
# ---------------------------------------------------------------------------------------------


def test_health_of_a_conserving_explanation():
    model = make_vit(biases=False)
    x = inputs(6)
    relevance, logits = lrp.attribute(model, x, "prediction", "cp-lrp", return_logits=True,
                                      epsilon=1e-12, stabilizer=1e-12)
    health = lrp.relevance_health(relevance, logits.max(dim=1).values)
    assert health["conservation"] == pytest.approx([1.0] * 6, abs=1e-8)
    assert abs(health["lost"]).max() < 1e-8
    assert not health["nonfinite"].any() and not health["zero"].any()


def test_health_sees_absorbed_relevance_and_summarises_per_class():
    """Biases absorb relevance and AttnLRP's softmax rule does not conserve: the ratio moves
    away from 1 in the figures, per class."""
    model = make_vit()
    x = inputs(8)
    relevance, logits = lrp.attribute(model, x, "prediction", "attn-lrp", return_logits=True)
    predicted = logits.argmax(dim=1)
    health = lrp.relevance_health(relevance, logits.max(dim=1).values)
    expected = relevance.flatten(1).sum(1) / logits.max(dim=1).values
    assert health["conservation"] == pytest.approx(expected.numpy(), rel=1e-12)
    assert abs(health["lost"]).max() > 1e-3
    summary = lrp.summarize_health(health, predicted)
    assert summary["all"]["samples"] == 8
    assert set(summary["classes"]) == set(predicted.tolist())
    assert sum(s["samples"] for s in summary["classes"].values()) == 8
    assert summary["all"]["conservation_min"] <= summary["all"]["conservation_median"]


def test_health_counts_nonfinite_and_zero_maps():
    maps = torch.ones(4, 1, 3, 3)
    maps[1, 0, 0, 0] = float("nan")
    maps[1, 0, 1, 1] = float("inf")
    maps[2] = 0.0
    health = lrp.relevance_health(maps, torch.tensor([9.0, 9.0, 1.0, 0.0]))
    assert health["nonfinite"].tolist() == [0, 2, 0, 0]
    assert health["zero"].tolist() == [False, False, True, False]
    assert health["conservation"][0] == 1.0 and health["conservation"][2] == 0.0
    assert torch.isnan(torch.as_tensor(health["conservation"][[1, 3]])).all()
    summary = lrp.summarize_health(health, [0, 0, 1, 1])["classes"]
    assert summary[0]["nonfinite_samples"] == 1 and summary[0]["undefined"] == 1
    assert summary[1]["zero_maps"] == 1 and summary[1]["undefined"] == 1
    with pytest.raises(DataError, match="same samples"):
        lrp.relevance_health(maps, torch.ones(3))


@pytest.mark.parametrize("size", [28, 30])
def test_patch_embedding_transpose_is_the_input_gradient(size):
    """The patch convolution's transposed pass (one matrix product) equals autograd's input
    gradient, also when the image is not a whole number of patches."""
    from spray.lrp.ops import AffineOp

    conv = nn.Conv2d(3, 8, 7, stride=7).double()
    op = AffineOp(conv, conv.weight.detach(), conv.bias.detach())
    x = inputs(2, size=size).requires_grad_(True)
    out = conv(x)
    signal = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, signal)
    assert op._patchwise(op.weight)
    assert torch.allclose(op.transpose(signal, op.weight, x.shape), expected, atol=1e-12)


def test_wrong_image_size_is_a_data_error():
    with pytest.raises(DataError, match=r"do not fit the model: Wrong image height"):
        lrp.attribute(make_vit(), inputs(2, size=32), 0, "attn-lrp")


class ScaledNet(nn.Module):
    """Constant scalings between layers (``x * c``, ``c * x``, ``x / c``, ``x.mul(c)``), as in
    attention's ``1/√d`` or hand-written normalisations, plus shape arithmetic."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False),
                                  nn.Linear(6, 3, bias=False))

    def forward(self, x):
        x = torch.relu(self.a(x)) * 0.5
        x = 3.0 * self.b(x) / 4.0
        x = x.mul(2.0).view(-1, x.size(1) * 1)
        return self.c(x)


def test_scaling_by_a_constant_passes_relevance_unchanged():
    torch.manual_seed(0)
    model = ScaledNet().double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    composite = lrp.Composite(layer_map=[(nn.Linear, Epsilon(1e-300))], stabilizer=1e-300)
    relevance, logits = lrp.attribute(model, x, "prediction", composite, return_logits=True)
    assert torch.allclose(logits, model(x))
    assert torch.allclose(relevance.sum(1), logits.max(1).values, rtol=1e-10)


class CrossAttentionNet(nn.Module):
    """Cross-attention with separate key/value widths (unpacked projection weights), RMSNorm
    and SiLU: the less common paths of the exposure."""

    def __init__(self):
        super().__init__()
        self.queries = nn.Linear(6, 8)
        self.memory = nn.Linear(6, 5)
        self.attention = nn.MultiheadAttention(8, 2, kdim=5, vdim=5, batch_first=True)
        self.norm = nn.RMSNorm(8)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(8, 3))

    def forward(self, x):
        attended, _ = self.attention(self.queries(x), self.memory(x), self.memory(x))
        return self.head(self.norm(attended).mean(dim=1))


def test_cross_attention_with_separate_projections():
    torch.manual_seed(0)
    model = CrossAttentionNet().double().eval()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    assert torch.allclose(expose_attention(model)(x), model(x), rtol=1e-10, atol=1e-12)
    targets = model(x).argmax(1)
    for softmax in ("attnlrp", "constant"):
        composite = transformer_composite(Epsilon(0.0), softmax=softmax, stabilizer=1e-12)
        relevance = lrp.attribute(model, x, targets, composite)
        assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    # CP-LRP without biases conserves through RMSNorm (scale constant) and SiLU (identity)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
    relevance, logits = lrp.attribute(model, x, "prediction", "cp-lrp", return_logits=True,
                                      epsilon=1e-12, stabilizer=1e-12)
    assert torch.allclose(relevance.flatten(1).sum(1), logits.max(1).values, rtol=1e-8)


def test_per_layer_rules_by_module_name():
    """A γ for one exposed projection and one MLP layer, named like the model's modules."""
    model = make_vit()
    x = inputs()
    base = lrp.attribute(model, x, "prediction", transformer_composite(Epsilon(1e-6)))
    for name in ("encoder.layers.encoder_layer_1.self_attention.v_proj",
                 "encoder.layers.encoder_layer_0.mlp.0"):
        composite = transformer_composite(Epsilon(1e-6))
        composite.name_map[name] = Gamma(0.5)
        program = lrp.prepare(model, composite)
        assert any(getattr(getattr(m, "layer", None), "rule", None) == Gamma(0.5)
                   for m in program.gm.modules())
        assert relative_error(lrp.attribute(model, x, "prediction", composite), base) > 1e-3


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_output_matches_torch(eps):
    """The rule node computes the normalisation exactly as torch does (default eps included)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.RMSNorm(8, eps=eps), nn.Linear(8, 2)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64) * 1e-7
    _, logits = lrp.attribute(model, x, 0, "attn-lrp", return_logits=True)
    assert torch.allclose(logits, model(x), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# timm vision transformers (architectures only, random weights)
# ---------------------------------------------------------------------------------------------


def make_timm_vit(fused, biases=True):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=10)
    with torch.no_grad():
        for name, param in model.named_parameters():
            absorbing = name.endswith("bias") or "cls_token" in name or "pos_embed" in name
            if absorbing:
                param.normal_(0, 0.3) if biases else param.zero_()
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model.eval().double()


def timm_attention(rules):
    def forward(self, x, attn_mask=None, is_causal=False):
        n, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4)
        q, k, v = rule_modified(*qkv.unbind(0), rules)
        a = torch.softmax(self.q_norm(q) @ self.k_norm(k).transpose(-2, -1) * self.scale, -1)
        out = (a @ v).transpose(1, 2).reshape(n, tokens, -1)
        return self.proj(self.norm(out))
    return forward


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "written-out"])
def test_timm_vit_conserves_and_keeps_its_function(fused):
    """timm's attention (``F.scaled_dot_product_attention`` or written out), its functional
    LayerNorm and its mask helpers are exposed; CP-LRP conserves the logit without biases."""
    model = make_timm_vit(fused, biases=False)
    x = inputs()
    relevance, logits = lrp.attribute(model, x, "prediction", "cp-lrp", return_logits=True,
                                      epsilon=1e-12, stabilizer=1e-12)
    assert torch.allclose(logits, model(x), rtol=1e-12, atol=1e-14)
    assert torch.allclose(relevance.flatten(1).sum(1), logits.max(1).values, rtol=1e-8)
    program = lrp.prepare(model, "attn-lrp")
    assert {"blocks.0.attn.scores", "blocks.0.norm1"} <= set(dict(program.gm.named_modules()))


@pytest.mark.parametrize("rules", ["attn", "cp"])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "written-out"])
def test_timm_vit_matches_gradient_times_input_identities(rules, fused):
    import timm.layers.attention
    import timm.layers.norm

    model = make_timm_vit(fused)
    x = inputs()
    targets = model(x).argmax(1)
    reference = gradient_times_input_reference(
        model, x, targets, rules, {timm.layers.attention.Attention: timm_attention(rules),
                                   timm.layers.norm.LayerNorm: reference_layer_norm})
    composite = transformer_composite(Epsilon(0.0), softmax="attnlrp" if rules == "attn"
                                      else "constant", stabilizer=1e-12)
    assert relative_error(lrp.attribute(model, x, targets, composite), reference) <= 1e-6


def test_product_with_a_parameter_is_not_taken_for_attention():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))
            self.values = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.softmax(x @ self.weight, dim=-1) @ self.values(x))

    with pytest.raises(ModelError, match=r"'matmul' computed in module '<model>'"):
        lrp.prepare(Net().eval(), "attn-lrp")
