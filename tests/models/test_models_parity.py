"""Parity with Hugging Face ``transformers`` reference implementations (built from config objects,
no download): weights are copied into our model and logits must agree to 1e-4 in fp32.

  pre / RMSNorm / SwiGLU / RoPE / GQA / no bias / untied        == LlamaForCausalLM
  pre / LayerNorm / GELU / learned positions / bias / tied      == GPT2LMHeadModel
  parallel / shared norm / RoPE / LayerNorm / GELU / bias       == GPTJForCausalLM
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import models  # noqa: E402
from models import ModelConfig  # noqa: E402

transformers = pytest.importorskip("transformers")

V, CTX, D, L, H = 96, 32, 64, 2, 4
HD = D // H
ATOL = 1e-4


def _randomise_hf(model: torch.nn.Module, seed: int = 0) -> None:
    """Replace HF's tiny default init with O(1)-scale weights so the comparison is not trivially
    dominated by near-uniform logits: matrices ~ N(0, 1/fan_in), norm gains 1 ± 0.2, biases ± 0.1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "wte" in name or "wpe" in name or "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[0] if p.shape[0] != p.shape[1] and "c_" in name else p.shape[1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def _hf_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # named_parameters de-duplicates tied weights


def _compare(ours: torch.nn.Module, hf: torch.nn.Module, seq_len: int = CTX) -> None:
    ours.eval()
    hf.eval()
    tokens = torch.randint(0, V, (3, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(tokens)
        b = hf(input_ids=tokens).logits
    assert a.shape == b.shape == (3, seq_len, V)
    assert b.std() > 0.5, "reference logits are near-constant; the comparison would be vacuous"
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def _load_exact(model: torch.nn.Module, state: dict) -> None:
    """load_state_dict(strict) and also check every tensor we set is really used (same shapes)."""
    own = model.state_dict()
    assert set(state) == set(own), (sorted(set(own) - set(state)), sorted(set(state) - set(own)))
    for k, t in state.items():
        assert own[k].shape == t.shape, (k, own[k].shape, t.shape)
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------
# LLaMA
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_kv_heads", [2, 1, 4], ids=["gqa", "mqa", "mha"])
def test_llama_parity(n_kv_heads):
    cfg = ModelConfig(vocab_size=V, context_length=CTX, d_model=D, n_layers=L, n_heads=H, n_kv_heads=n_kv_heads,
                      norm_position="pre", norm="rmsnorm", norm_eps=1e-5, ffn="swiglu", block="serial",
                      position="rope", rope_theta=10000.0, bias=False, tie_embeddings=False)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=cfg.ffn_dim, num_hidden_layers=L,
        num_attention_heads=H, num_key_value_heads=n_kv_heads, max_position_embeddings=CTX,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg)
    _randomise_hf(hf)
    ours = models.build(cfg)
    s = {k: v.clone() for k, v in hf.state_dict().items()}
    state = {"tok_emb.weight": s["model.embed_tokens.weight"], "final_norm.weight": s["model.norm.weight"],
             "head.weight": s["lm_head.weight"]}
    for i in range(L):
        p, q = f"model.layers.{i}.", f"blocks.{i}.sublayers."
        state[q + "0.norm.weight"] = s[p + "input_layernorm.weight"]
        state[q + "0.f.qkv.weight"] = torch.cat([s[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        state[q + "0.f.out.weight"] = s[p + "self_attn.o_proj.weight"]
        state[q + "1.norm.weight"] = s[p + "post_attention_layernorm.weight"]
        state[q + "1.f.ffn.up.weight"] = torch.cat([s[p + "mlp.gate_proj.weight"], s[p + "mlp.up_proj.weight"]])
        state[q + "1.f.ffn.down.weight"] = s[p + "mlp.down_proj.weight"]
    _load_exact(ours, state)
    assert models.count_params(ours)["total"] == _hf_params(hf)
    _compare(ours, hf)
    _compare(ours, hf, seq_len=7)


# ------------------------------------------------------------------------------------------------
# GPT-2
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ours_ffn,hf_act", [("gelu", "gelu"), ("gelu_tanh", "gelu_new")])
def test_gpt2_parity(ours_ffn, hf_act):
    cfg = ModelConfig(vocab_size=V, context_length=CTX, d_model=D, n_layers=L, n_heads=H,
                      norm_position="pre", norm="layernorm", norm_eps=1e-5, ffn=ours_ffn, block="serial",
                      position="learned", bias=True, tie_embeddings=True)
    hf_cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=CTX, n_embd=D, n_layer=L, n_head=H, n_inner=None,
        activation_function=hf_act, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, attn_implementation="eager",
        bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg)
    _randomise_hf(hf)
    assert hf.lm_head.weight is hf.transformer.wte.weight
    ours = models.build(cfg)
    s = {k: v.clone() for k, v in hf.state_dict().items()}
    state = {"tok_emb.weight": s["transformer.wte.weight"], "pos.weight": s["transformer.wpe.weight"],
             "final_norm.weight": s["transformer.ln_f.weight"], "final_norm.bias": s["transformer.ln_f.bias"],
             "head.weight": s["transformer.wte.weight"]}
    for i in range(L):
        p, q = f"transformer.h.{i}.", f"blocks.{i}.sublayers."
        for ln, j in (("ln_1", 0), ("ln_2", 1)):
            state[q + f"{j}.norm.weight"] = s[p + f"{ln}.weight"]
            state[q + f"{j}.norm.bias"] = s[p + f"{ln}.bias"]
        # Conv1D stores (in, out): transpose into nn.Linear's (out, in); c_attn is fused [q; k; v]
        for hf_name, our_name in (("attn.c_attn", "0.f.qkv"), ("attn.c_proj", "0.f.out"),
                                  ("mlp.c_fc", "1.f.ffn.up"), ("mlp.c_proj", "1.f.ffn.down")):
            state[q + our_name + ".weight"] = s[p + hf_name + ".weight"].T.contiguous()
            state[q + our_name + ".bias"] = s[p + hf_name + ".bias"]
    _load_exact(ours, state)
    assert ours.head.weight is ours.tok_emb.weight
    assert models.count_params(ours)["total"] == _hf_params(hf)
    _compare(ours, hf)
    _compare(ours, hf, seq_len=5)


# ------------------------------------------------------------------------------------------------
# GPT-J
# ------------------------------------------------------------------------------------------------
def _every_two_to_half(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection within each head from GPT-J's interleaved rotary pairs
    (2i, 2i+1) to our half-split pairs (i, i + head_dim/2): new row j takes old row perm[j] with
    perm = [0, 2, 4, ..., 1, 3, 5, ...]."""
    perm = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return w.reshape(n_heads, head_dim, *w.shape[1:])[:, perm].reshape(w.shape)


def test_gptj_parity():
    cfg = ModelConfig(vocab_size=V, context_length=CTX, d_model=D, n_layers=L, n_heads=H,
                      norm_position="pre", norm="layernorm", norm_eps=1e-5, ffn="gelu_tanh", block="parallel",
                      position="rope", rope_theta=10000.0, bias=True, tie_embeddings=False)
    hf_cfg = transformers.GPTJConfig(
        vocab_size=V, n_positions=CTX, n_embd=D, n_layer=L, n_head=H, rotary_dim=HD, n_inner=None,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=False, attn_implementation="eager",
        bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(0)
    hf = transformers.GPTJForCausalLM(hf_cfg)
    _randomise_hf(hf)
    ours = models.build(cfg)
    s = {k: v.clone() for k, v in hf.state_dict().items() if not k.endswith("embed_positions")}
    state = {"tok_emb.weight": s["transformer.wte.weight"],
             "final_norm.weight": s["transformer.ln_f.weight"], "final_norm.bias": s["transformer.ln_f.bias"],
             "head.weight": s["lm_head.weight"], "head.bias": s["lm_head.bias"]}
    for i in range(L):
        p, q = f"transformer.h.{i}.", f"blocks.{i}.sublayers.0."
        state[q + "norm.weight"] = s[p + "ln_1.weight"]
        state[q + "norm.bias"] = s[p + "ln_1.bias"]
        wq = _every_two_to_half(s[p + "attn.q_proj.weight"], H, HD)
        wk = _every_two_to_half(s[p + "attn.k_proj.weight"], H, HD)
        state[q + "f.proj.weight"] = torch.cat([wq, wk, s[p + "attn.v_proj.weight"], s[p + "mlp.fc_in.weight"]])
        # GPT-J has no attention biases: ours are set to zero
        state[q + "f.proj.bias"] = torch.cat([torch.zeros(3 * D), s[p + "mlp.fc_in.bias"]])
        state[q + "f.attn.out.weight"] = s[p + "attn.out_proj.weight"]
        state[q + "f.attn.out.bias"] = torch.zeros(D)
        state[q + "f.down.weight"] = s[p + "mlp.fc_out.weight"]
        state[q + "f.down.bias"] = s[p + "mlp.fc_out.bias"]
    _load_exact(ours, state)
    attention_bias_params = L * (3 * D + D)  # q, k, v parts of proj.bias + out.bias, all zero here
    assert models.count_params(ours)["total"] - attention_bias_params == _hf_params(hf)
    _compare(ours, hf)
    _compare(ours, hf, seq_len=9)


def test_gptj_parity_needs_the_rotary_permutation():
    """Negative control: copying q/k rows without the every-two -> half permutation must break
    parity, so the GPT-J test really exercises the rotary layout."""
    cfg = ModelConfig(vocab_size=V, context_length=CTX, d_model=D, n_layers=1, n_heads=H, norm="layernorm",
                      ffn="gelu_tanh", block="parallel", position="rope", bias=True, tie_embeddings=False)
    hf_cfg = transformers.GPTJConfig(vocab_size=V, n_positions=CTX, n_embd=D, n_layer=1, n_head=H, rotary_dim=HD,
                                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, tie_word_embeddings=False, attn_implementation="eager",
                                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = transformers.GPTJForCausalLM(hf_cfg)
    _randomise_hf(hf)
    ours = models.build(cfg)
    s = hf.state_dict()
    p = "transformer.h.0."
    with torch.no_grad():
        ours.tok_emb.weight.copy_(s["transformer.wte.weight"])
        ours.final_norm.weight.copy_(s["transformer.ln_f.weight"])
        ours.final_norm.bias.copy_(s["transformer.ln_f.bias"])
        ours.head.weight.copy_(s["lm_head.weight"])
        ours.head.bias.copy_(s["lm_head.bias"])
        sub = ours.blocks[0].sublayers[0]
        sub.norm.weight.copy_(s[p + "ln_1.weight"])
        sub.norm.bias.copy_(s[p + "ln_1.bias"])
        sub.f.proj.weight.copy_(torch.cat([s[p + f"attn.{n}_proj.weight"] for n in "qkv"] + [s[p + "mlp.fc_in.weight"]]))
        sub.f.proj.bias.copy_(torch.cat([torch.zeros(3 * D), s[p + "mlp.fc_in.bias"]]))
        sub.f.attn.out.weight.copy_(s[p + "attn.out_proj.weight"])
        sub.f.attn.out.bias.zero_()
        sub.f.down.weight.copy_(s[p + "mlp.fc_out.weight"])
        sub.f.down.bias.copy_(s[p + "mlp.fc_out.bias"])
    with pytest.raises(AssertionError):
        _compare(ours, hf)
