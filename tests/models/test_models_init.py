"""reset_parameters: a multi-run job re-draws a built model's weights in place instead of building a new one."""
import pytest
import torch
from torch import nn

import models
from models.init import INITS, reset_parameters

CASES = [dict(init=i) for i in INITS] + [
    dict(norm="layernorm", bias=True, position="learned", tie_embeddings=False),
    dict(qk_norm=True, norm_position="sandwich"),
    dict(ffn="gelu", block="parallel", n_kv_heads=1),
]


def fresh(cfg, seed):
    m = models.build(cfg)
    torch.manual_seed(seed)
    reset_parameters(m, cfg)
    return m


@pytest.mark.parametrize("over", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_reset_after_training_equals_a_fresh_model(over):
    cfg = models.ModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "context_length": 16, **over})
    used = fresh(cfg, 0)
    opt = torch.optim.AdamW(used.parameters(), lr=1e-2)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    for _ in range(3):  # move every weight, norm gains included
        used(x).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    torch.manual_seed(7)
    reset_parameters(used, cfg)
    ref = fresh(cfg, 7)
    for (n, a), (_, b) in zip(used.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n
    other = fresh(cfg, 8)
    assert not torch.equal(other.tok_emb.weight, ref.tok_emb.weight)


def test_tied_head_keeps_the_embedding_initialisation():
    cfg = models.ModelConfig(d_model=64, n_layers=2, n_heads=4, init="xavier", tie_embeddings=True)
    m = fresh(cfg, 0)
    assert m.head.weight is m.tok_emb.weight
    assert m.tok_emb.weight.std().item() == pytest.approx(cfg.init_std, rel=0.05)  # N(0, init_std), not Glorot


def test_norm_gains_and_shifts_are_reset():
    cfg = models.ModelConfig(d_model=16, n_layers=1, n_heads=2, norm="layernorm", bias=True)
    m = fresh(cfg, 0)
    with torch.no_grad():
        m.final_norm.weight.add_(3.0)
        m.final_norm.bias.add_(1.0)
    reset_parameters(m, cfg)
    assert torch.equal(m.final_norm.weight, torch.ones(16)) and torch.equal(m.final_norm.bias, torch.zeros(16))


def test_unknown_parameter_is_an_error():
    cfg = models.ModelConfig(d_model=16, n_layers=1, n_heads=2)
    m = models.build(cfg)
    m.extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="extra"):
        reset_parameters(m, cfg)
