"""models/ against references written out here: norms vs torch, attention vs a naive float64
softmax, GQA/MQA vs MHA with repeated K/V, RoPE's relative-position property, causality over every
value of every axis, and soft-capping."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import models  # noqa: E402
from models import CHOICES, ModelConfig  # noqa: E402
from models.attention import Attention, softcap  # noqa: E402
from models.norms import LayerNorm, NoNorm, RMSNorm, make_norm  # noqa: E402
from models.positions import Rotary  # noqa: E402


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# 1. norms
# ------------------------------------------------------------------------------------------------
def _norm_input(dim: int, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    # non-zero mean and non-unit scale per row so both centring and scaling matter
    return torch.randn(3, 7, dim, generator=g) * 3.0 + torch.randn(3, 7, 1, generator=g) * 2.0


def _randomise(module: nn.Module, seed: int) -> None:
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("dim", [8, 64])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_equals_torch(dim, eps, bias):
    ours = LayerNorm(dim, eps, bias)
    _randomise(ours, seed=dim)
    ref = nn.LayerNorm(dim, eps=eps, bias=bias)
    ref.load_state_dict(ours.state_dict())
    assert (ours.bias is not None) == bias
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = _norm_input(dim)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    # and the same module through the factory the model uses
    via = make_norm("layernorm", dim, eps, bias)
    via.load_state_dict(ours.state_dict())
    torch.testing.assert_close(via(x), ref(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [8, 64])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
@pytest.mark.parametrize("bias", [True, False])  # RMSNorm ignores bias: it has no shift
def test_rmsnorm_equals_torch(dim, eps, bias):
    ours = make_norm("rmsnorm", dim, eps, bias)
    assert isinstance(ours, RMSNorm)
    assert [n for n, _ in ours.named_parameters()] == ["weight"]
    _randomise(ours, seed=dim + 1)
    ref = nn.RMSNorm(dim, eps=eps)
    ref.load_state_dict(ours.state_dict())
    x = _norm_input(dim, seed=1)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours(x), F.rms_norm(x, (dim,), ours.weight, eps), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_eps_inside_sqrt(kind):
    """A large eps on a small input tells eps-inside-sqrt from eps-outside (float64 formula)."""
    dim, eps = 16, 0.5
    norm = make_norm(kind, dim, eps, True)
    _randomise(norm, seed=3)
    x = _norm_input(dim, seed=4) * 0.1
    xd = x.double()
    if kind == "layernorm":
        mu = xd.mean(-1, keepdim=True)
        var = ((xd - mu) ** 2).mean(-1, keepdim=True)  # biased variance
        ref = (xd - mu) / torch.sqrt(var + eps) * norm.weight.double() + norm.bias.double()
    else:
        ref = xd / torch.sqrt((xd ** 2).mean(-1, keepdim=True) + eps) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), ref, rtol=0, atol=1e-6)


def test_no_norm_is_identity():
    norm = make_norm("none", 16, 1e-5, True)
    assert isinstance(norm, NoNorm) and not list(norm.parameters())
    x = _norm_input(16)
    assert torch.equal(norm(x), x)


# ------------------------------------------------------------------------------------------------
# 2. attention vs a naive float64 implementation
# ------------------------------------------------------------------------------------------------
def naive_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Half-split RoPE written as complex rotation: pair (x_i, x_{i+h}) at position m is multiplied
    by exp(i m theta^(-2i/d)). x: (B, heads, T, d), float64."""
    d = x.shape[-1]
    h = d // 2
    T = x.shape[-2]
    freqs = theta ** (-torch.arange(h, dtype=torch.float64) * 2 / d)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None, :]
    z = torch.complex(x[..., :h], x[..., h:]) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([z.real, z.imag], dim=-1)


def naive_norm(x, kind, weight, bias, eps):
    x = x.double()
    if kind == "rmsnorm":
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps) * weight.double()
    return y if bias is None else y + bias.double()


def naive_attention(attn: Attention, cfg: ModelConfig, x: torch.Tensor):
    """Per-head loop, float64: softmax(mask(cap(q k^T / sqrt(d)))) v with query head h reading kv
    head h // (H / G). Returns (output, max pre-cap causal logit)."""
    H, G, d = cfg.n_heads, cfg.kv_heads, cfg.dim_head
    B, T, _ = x.shape
    W, b = attn.qkv.weight.double(), attn.qkv.bias
    qkv = x.double() @ W.T + (0.0 if b is None else b.double())
    q = qkv[..., : H * d].reshape(B, T, H, d).transpose(1, 2)
    k = qkv[..., H * d: (H + G) * d].reshape(B, T, G, d).transpose(1, 2)
    v = qkv[..., (H + G) * d:].reshape(B, T, G, d).transpose(1, 2)
    if cfg.qk_norm:
        q = naive_norm(q, cfg.norm, attn.q_norm.weight, getattr(attn.q_norm, "bias", None), cfg.norm_eps)
        k = naive_norm(k, cfg.norm, attn.k_norm.weight, getattr(attn.k_norm, "bias", None), cfg.norm_eps)
    if cfg.position == "rope":
        q, k = naive_rope(q, cfg.rope_theta), naive_rope(k, cfg.rope_theta)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    heads, max_logit = [], -math.inf
    for h in range(H):
        g = h // (H // G)
        s = q[:, h] @ k[:, g].transpose(-1, -2) / math.sqrt(d)
        max_logit = max(max_logit, s.masked_fill(future, -math.inf).max().item())
        if cfg.attn_softcap is not None:
            s = cfg.attn_softcap * torch.tanh(s / cfg.attn_softcap)
        p = torch.softmax(s.masked_fill(future, -math.inf), dim=-1)
        heads.append(p @ v[:, g])
    y = torch.cat(heads, dim=-1)
    out = y @ attn.out.weight.double().T
    if attn.out.bias is not None:
        out = out + attn.out.bias.double()
    return out, max_logit


ATTN_KINDS = {"mha": 4, "gqa": 2, "mqa": 1}


@pytest.mark.parametrize("kind", list(ATTN_KINDS))
@pytest.mark.parametrize("position", ["rope", "none"])
@pytest.mark.parametrize("qk_norm", [None, "rmsnorm", "layernorm"])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_attention_equals_naive_float64(kind, position, qk_norm, cap):
    cfg = ModelConfig(vocab_size=32, context_length=16, d_model=32, n_layers=1, n_heads=4,
                      n_kv_heads=ATTN_KINDS[kind], position=position,
                      norm=qk_norm or "rmsnorm", qk_norm=qk_norm is not None,
                      bias=qk_norm == "layernorm", attn_softcap=cap)
    attn = Attention(cfg).eval()
    g = _gen(11)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if name.startswith(("q_norm", "k_norm")):
                p.copy_(2.0 + 0.5 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(2, 13, cfg.d_model, generator=g)
    rec = {}
    with torch.no_grad():
        out = attn(x, rec)
    ref, ref_max = naive_attention(attn, cfg, x)
    if cap is not None:  # the cap must actually bind for this test to mean anything
        assert ref_max > 1.5 * cap
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert rec["attn_logit_max"].item() == pytest.approx(ref_max, rel=1e-5)


def _expand_kv(w: torch.Tensor, H: int, G: int, d: int) -> torch.Tensor:
    """(G*d, ...) -> (H*d, ...): query head h gets kv head h // (H/G)."""
    return w.reshape(G, d, *w.shape[1:]).repeat_interleave(H // G, dim=0).reshape(H * d, *w.shape[1:])


def _mha_state_from_grouped(sd: dict, cfg: ModelConfig) -> dict:
    H, G, d = cfg.n_heads, cfg.kv_heads, cfg.dim_head
    out = {}
    for name, t in sd.items():
        if name.endswith(("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")):
            q, k, v, rest = t.split([H * d, G * d, G * d, t.shape[0] - (H + 2 * G) * d], dim=0)
            t = torch.cat([q, _expand_kv(k, H, G, d), _expand_kv(v, H, G, d), rest], dim=0)
        out[name] = t
    return out


@pytest.mark.parametrize("n_kv_heads", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("block", ["serial", "parallel"])
@pytest.mark.parametrize("attn_softcap", [None, 4.0], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_attention_equals_mha_with_repeated_kv(n_kv_heads, block, attn_softcap, bias):
    kw = dict(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, block=block,
              attn_softcap=attn_softcap, bias=bias, qk_norm=True, ffn="gelu", tie_embeddings=False)
    cfg_g = ModelConfig(n_kv_heads=n_kv_heads, **kw)
    cfg_m = ModelConfig(n_kv_heads=4, **kw)
    torch.manual_seed(0)
    grouped = models.build(cfg_g).eval()
    with torch.no_grad():  # non-trivial biases and norm gains
        for name, p in grouped.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif p.dim() == 2:
                p.mul_(10.0)
    mha = models.build(cfg_m).eval()
    mha.load_state_dict(_mha_state_from_grouped(grouped.state_dict(), cfg_g))
    tokens = torch.randint(0, 64, (3, 16), generator=_gen(1))
    with torch.no_grad():
        a, b = grouped(tokens), mha(tokens)
    assert a.std() > 0.1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the grouped model really has fewer K/V parameters
    n_g, n_m = models.count_params(grouped)["total"], models.count_params(mha)["total"]
    d = cfg_g.dim_head
    assert n_m - n_g == cfg_g.n_layers * 2 * (4 - n_kv_heads) * d * (cfg_g.d_model + bias)


def test_n_kv_heads_equal_n_heads_is_exactly_mha():
    base = dict(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)
    a_cfg, b_cfg = ModelConfig(**base), ModelConfig(n_kv_heads=4, **base)
    assert a_cfg.attention_kind == b_cfg.attention_kind == "mha"
    assert a_cfg.kv_heads == b_cfg.kv_heads == 4
    torch.manual_seed(0)
    a = models.build(a_cfg)
    torch.manual_seed(0)
    b = models.build(b_cfg)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    tokens = torch.randint(0, 64, (2, 16), generator=_gen(0))
    assert torch.equal(a(tokens), b(tokens))


# ------------------------------------------------------------------------------------------------
# block wiring: every norm position / block / residual against its equation, whole model
# ------------------------------------------------------------------------------------------------
def naive_forward(model, cfg: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """The whole model written from the equations in blocks.py, reusing only the leaf modules
    (norms, attention, linears) that are checked against references above:
      pre x + f(N(x)); post N(x + f(x)); sandwich x + N2(f(N1(x))); reordered x + N(f(x));
      parallel f(h) = attn(h) + W2 act(W1 h) with [q; k; v; W1] one fused projection;
      final norm for every position but post; logits cap*tanh(z/cap)."""
    T = tokens.shape[1]
    x = model.tok_emb.weight[tokens]
    if cfg.position in ("learned", "sinusoidal"):
        x = x + model.pos(T)
    skip = (lambda h: h) if cfg.residual else (lambda h: 0.0)
    act = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
           "silu": F.silu, "swiglu": F.silu, "geglu": F.gelu, "reglu": F.relu}[cfg.ffn]
    gated = cfg.ffn in ("swiglu", "geglu", "reglu")
    f_dim = cfg.ffn_dim

    def mlp(h, up, down):
        u = F.linear(h, up.weight, up.bias)
        u = act(u[..., :f_dim]) * u[..., f_dim:] if gated else act(u)
        return F.linear(u, down.weight, down.bias)

    for block in model.blocks:
        if cfg.block == "parallel":
            sub = block.sublayers[0]
            par = sub.f
            n_attn = sum(par.attn.split_sizes)
            up = nn.Linear(cfg.d_model, par.proj.out_features - n_attn, bias=cfg.bias)
            up.weight = nn.Parameter(par.proj.weight[n_attn:])
            up.bias = None if par.proj.bias is None else nn.Parameter(par.proj.bias[n_attn:])

            def f(h, par=par, up=up, n_attn=n_attn):
                qkv = F.linear(h, par.proj.weight[:n_attn], None if par.proj.bias is None else par.proj.bias[:n_attn])
                return par.attn.attend(qkv) + mlp(h, up, par.down)

            subs = [(sub, f)]
        else:
            a, m = block.sublayers
            subs = [(a, a.f), (m, lambda h, m=m: mlp(h, m.f.ffn.up, m.f.ffn.down))]
        for sub, f in subs:
            if cfg.norm_position == "pre":
                x = skip(x) + f(sub.norm(x))
            elif cfg.norm_position == "post":
                x = sub.norm(skip(x) + f(x))
            elif cfg.norm_position == "sandwich":
                x = skip(x) + sub.norm_out(f(sub.norm_in(x)))
            else:
                x = skip(x) + sub.norm(f(x))
    if cfg.norm_position != "post":
        x = model.final_norm(x)
    else:
        assert isinstance(model.final_norm, nn.Identity)
    z = F.linear(x, model.head.weight, model.head.bias)
    return z if cfg.final_softcap is None else cfg.final_softcap * torch.tanh(z / cfg.final_softcap)


WIRING = [(npos, block, residual) for npos in CHOICES["norm_position"] for block in CHOICES["block"]
          for residual in (True, False)]


@pytest.mark.parametrize("norm_position,block,residual", WIRING,
                         ids=[f"{n}-{b}-{'res' if r else 'nores'}" for n, b, r in WIRING])
def test_model_equals_block_equations(norm_position, block, residual):
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, norm="layernorm",
                      bias=True, norm_position=norm_position, block=block, residual=residual, ffn="geglu",
                      position="learned", final_softcap=8.0, tie_embeddings=False)
    torch.manual_seed(0)
    model = models.build(cfg).eval()
    g = _gen(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.dim() == 2 else 3.0))
    tokens = torch.randint(0, 64, (2, 16), generator=g)
    with torch.no_grad():
        ref = naive_forward(model, cfg, tokens)
        out = model(tokens)
    assert ref.std() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# 3. causality, every value of every axis
# ------------------------------------------------------------------------------------------------
CAUSAL_BASE = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)
AXIS_VALUES = [(axis, v) for axis, vals in CHOICES.items() for v in vals]
AXIS_VALUES += [(axis, v) for axis in ("bias", "qk_norm", "residual", "tie_embeddings") for v in (False, True)]
AXIS_VALUES += [("attn_softcap", None), ("attn_softcap", 2.0), ("final_softcap", None), ("final_softcap", 2.0),
                ("n_kv_heads", None), ("n_kv_heads", 2), ("n_kv_heads", 1), ("dropout", 0.0), ("dropout", 0.3)]
AXIS_VALUES += [("final_norm", None), ("final_norm", False), ("final_norm", True), ("attention_module", None)]


def test_axis_values_cover_every_field():
    """Every architecture field of ModelConfig is exercised by the causality sweep."""
    shape_fields = {"vocab_size", "context_length", "d_model", "n_layers", "n_heads", "head_dim", "d_ff",
                    "ffn_multiple_of", "norm_eps", "rope_theta", "init_std"}
    covered = {a for a, _ in AXIS_VALUES}
    from dataclasses import fields
    assert {f.name for f in fields(ModelConfig)} - shape_fields == covered


CAUSAL_CASES = [(block, axis, value) for block in ("serial", "parallel") for axis, value in AXIS_VALUES
                if not (axis == "block" and value != block)]


@pytest.mark.parametrize("block,axis,value", CAUSAL_CASES, ids=[f"{b}-{a}={v}" for b, a, v in CAUSAL_CASES])
def test_causality(block, axis, value):
    cfg = CAUSAL_BASE.replace(**{"block": block, axis: value})
    torch.manual_seed(0)
    model = models.build(cfg)
    train = cfg.dropout > 0  # with dropout, run in train mode with identical RNG state per forward
    model.train(train)
    T = cfg.context_length
    tokens = torch.randint(0, cfg.vocab_size, (2, T), generator=_gen(5))

    def run(tok):
        torch.manual_seed(123)
        with torch.no_grad():
            return model(tok)

    base = run(tokens)
    for t in (1, 7, T - 1):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1 + torch.arange(2)) % cfg.vocab_size
        out = run(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6,
                                   msg=lambda m: f"{axis}={value}: token {t} leaked into earlier logits\n{m}")
        assert (out[:, t] - base[:, t]).abs().max() > 1e-6, "changing a token must change its own logits"


# ------------------------------------------------------------------------------------------------
# 4. RoPE
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head_dim,theta", [(16, 10000.0), (8, 500.0), (64, 1e6)])
def test_rope_dot_product_depends_only_on_offset(head_dim, theta):
    T = 32
    rope = Rotary(head_dim, T, theta)
    g = _gen(head_dim)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    rq = rope(q.expand(1, 1, T, head_dim))[0, 0]
    rk = rope(k.expand(1, 1, T, head_dim))[0, 0]
    S = (rq.double() @ rk.double().T)  # S[m, n] = <R_m q, R_n k>
    # depends only on m - n: every diagonal is constant
    torch.testing.assert_close(S[1:, 1:], S[:-1, :-1], rtol=0, atol=1e-4)
    # offset zero recovers the plain dot product; rotations preserve norms
    torch.testing.assert_close(S.diagonal(), (q @ k).double().expand(T), rtol=0, atol=1e-4)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(T), rtol=1e-5, atol=0)
    # and equals the complex-rotation reference at every offset
    qd = naive_rope(q.double().expand(1, 1, T, head_dim), theta)[0, 0]
    kd = naive_rope(k.double().expand(1, 1, T, head_dim), theta)[0, 0]
    torch.testing.assert_close(S, qd @ kd.T, rtol=0, atol=1e-4)
    torch.testing.assert_close(rq.double(), qd, rtol=0, atol=1e-5)
    # the offset does matter (the test would pass trivially for the identity)
    assert (S[0, 1:] - S[0, 0]).abs().max() > 1e-2


def test_rope_scores_shift_invariant_inside_attention():
    """The attention module's rotated scores for the same content placed 6 positions later are
    unchanged: absolute position drops out of q.k."""
    cfg = ModelConfig(vocab_size=32, context_length=32, d_model=32, n_layers=1, n_heads=4, position="rope")
    attn = Attention(cfg).eval()
    x = torch.randn(1, 10, 32, generator=_gen(2))
    pad = torch.randn(1, 6, 32, generator=_gen(3))

    def scores(inp):
        q, k, _ = attn.qkv(inp).split(attn.split_sizes, dim=-1)
        T = inp.shape[1]
        q = attn.rope(q.view(1, T, 4, 8).transpose(1, 2))
        k = attn.rope(k.view(1, T, 4, 8).transpose(1, 2))
        return q @ k.transpose(-1, -2)

    with torch.no_grad():
        shifted, direct = scores(torch.cat([pad, x], dim=1))[..., 6:, 6:], scores(x)
    torch.testing.assert_close(shifted, direct, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# soft-capping
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cap", [0.5, 30.0])
def test_softcap_never_exceeds_cap(dtype, cap):
    big = torch.finfo(dtype).max
    x = torch.tensor([-big, -1e4, -cap, -1.0, 0.0, 1.0, cap, 1e4, big], dtype=dtype)
    x = torch.cat([x, torch.randn(1000, generator=_gen(0)).to(dtype) * 1e3])
    y = softcap(x, cap)
    assert torch.isfinite(y).all()
    assert (y.abs() <= torch.tensor(cap, dtype=dtype)).all()
    # monotone, odd and ~identity near zero
    xs, _ = x.sort()
    assert (softcap(xs, cap).diff() >= 0).all()
    assert torch.equal(softcap(-x, cap), -y)
    assert softcap(torch.tensor(1e-3, dtype=torch.float64), cap).item() == pytest.approx(1e-3, rel=1e-5)
    assert softcap(x, None) is x


def test_final_softcap_bounds_logits_and_equals_tanh_of_uncapped():
    cap = 5.0
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=1, n_heads=4,
                      tie_embeddings=False, final_softcap=cap)
    torch.manual_seed(0)
    capped = models.build(cfg).eval()
    plain = models.build(cfg.replace(final_softcap=None)).eval()
    with torch.no_grad():
        capped.head.weight.mul_(1e6)  # huge logits
    plain.load_state_dict(capped.state_dict())
    tokens = torch.randint(0, 64, (2, 16), generator=_gen(0))
    with torch.no_grad():
        a, b = capped(tokens), plain(tokens)
    assert b.abs().max() > 1e4
    assert a.abs().max() <= cap
    torch.testing.assert_close(a.double(), cap * torch.tanh(b.double() / cap), rtol=1e-6, atol=1e-6)


def test_attention_softcap_bounds_scores_for_huge_inputs():
    """With huge q/k the capped attention is still finite and equals the naive capped reference."""
    cfg = ModelConfig(vocab_size=32, context_length=16, d_model=32, n_layers=1, n_heads=4, attn_softcap=2.0,
                      position="none")
    attn = Attention(cfg).eval()
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 1.0, generator=_gen(0))
    x = torch.randn(1, 16, 32, generator=_gen(1)) * 1e3
    with torch.no_grad():
        out = attn(x)
    ref, ref_max = naive_attention(attn, cfg, x)
    assert ref_max > 1e6
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
