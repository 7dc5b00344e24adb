"""The final_norm axis (ModelConfig.final_norm): None keeps each norm position's default (models/blocks.py
FINAL_NORM) bit for bit; False leaves nothing between the last block and the head; True adds one to post-norm."""
import pytest
import torch
from torch import nn

import models
from models import ConfigError, ModelConfig
from models.blocks import FINAL_NORM
from models.norms import NORMS

BASE = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, bias=True,
                   norm="layernorm")


def _run(cfg, tokens):
    torch.manual_seed(0)
    model = models.build(cfg)
    with torch.no_grad():
        return model, model(tokens)


@pytest.mark.parametrize("norm_position", list(FINAL_NORM))
def test_none_is_the_norm_positions_default_bit_for_bit(norm_position):
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    cfg = BASE.replace(norm_position=norm_position)
    assert cfg.final_norm is None and cfg.has_final_norm == FINAL_NORM[norm_position]
    m_none, out_none = _run(cfg, tokens)
    m_set, out_set = _run(cfg.replace(final_norm=FINAL_NORM[norm_position]), tokens)
    assert torch.equal(out_none, out_set)
    assert m_none.state_dict().keys() == m_set.state_dict().keys()
    assert isinstance(m_none.final_norm, NORMS["layernorm"]) == FINAL_NORM[norm_position]


def test_pre_norm_without_final_norm_feeds_the_head_the_residual_stream():
    cfg = BASE.replace(final_norm=False)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    model, logits = _run(cfg, tokens)
    assert isinstance(model.final_norm, nn.Identity)
    assert not any(n.startswith("final_norm") for n, _ in model.named_parameters())
    seen = {}
    model.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.update(x=out))
    with torch.no_grad():
        model(tokens)
    torch.testing.assert_close(logits, model.head(seen["x"]), rtol=0, atol=0)
    _, with_norm = _run(BASE, tokens)  # the default (on) differs: the test can tell them apart
    assert (with_norm - logits).abs().max() > 1e-3


def test_post_norm_with_final_norm():
    model, _ = _run(BASE.replace(norm_position="post", final_norm=True), torch.zeros(1, 4, dtype=torch.long))
    assert isinstance(model.final_norm, NORMS["layernorm"])


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_final_norm_must_be_a_bool_or_null(value):
    with pytest.raises(ConfigError, match=r"final_norm=.* must be of type bool or null"):
        BASE.replace(final_norm=value)
