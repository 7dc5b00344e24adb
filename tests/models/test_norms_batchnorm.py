"""norm='batchnorm' (models/norms.py): equal to nn.BatchNorm1d over the channel dim in train and eval mode,
running statistics reset between runs, QK-norm rejected, and its documented non-causality: in training mode
a future token changes the outputs at earlier positions (and other sequences' outputs), unlike
layernorm/rmsnorm, and unlike batchnorm in eval mode."""
import pytest
import torch

import models
from models import ConfigError, ModelConfig
from models.init import reset_parameters
from models.norms import BatchNorm

BASE = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)


@pytest.mark.parametrize("bias", [False, True])
def test_batchnorm_matches_torch_batchnorm1d(bias):
    torch.manual_seed(0)
    ours, ref = BatchNorm(8, 1e-5, bias), torch.nn.BatchNorm1d(8, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        ours.weight.normal_(1, 0.1)
        ref.weight.copy_(ours.weight)
        if bias:
            ours.bias.normal_(0, 0.1)
            ref.bias.copy_(ours.bias)
    for step in range(3):  # train mode: batch statistics over (B, T); running estimates updated
        x = (torch.randn(4, 5, 8) * 3 + 1).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        y, y_ref = ours(x), ref(x_ref.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d takes (B, C, T)
        torch.testing.assert_close(y, y_ref)
        cot = torch.randn_like(y)
        (y * cot).sum().backward()
        (y_ref * cot).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ours(x), ref(x.transpose(1, 2)).transpose(1, 2))
    assert not torch.allclose(ours(x), BatchNorm(8, 1e-5, bias).eval()(x))  # the running stats moved


def _outputs(cfg, train: bool, tokens):
    torch.manual_seed(0)
    model = models.build(cfg).train(train)
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("norm, train, causal", [
    ("batchnorm", True, False), ("batchnorm", False, True),
    ("layernorm", True, True), ("rmsnorm", True, True),
])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_batchnorm_is_not_causal_in_train_mode(norm, train, causal, norm_position):
    cfg = BASE.replace(norm=norm, norm_position=norm_position)
    tokens = torch.randint(0, cfg.vocab_size, (4, cfg.context_length), generator=torch.Generator().manual_seed(1))
    t = 7
    changed = tokens.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % cfg.vocab_size  # perturb tokens t+1..
    other = tokens.clone()
    other[1:, t + 1:] = changed[1:, t + 1:]  # ... of the other sequences only
    base, out, out_other = (_outputs(cfg, train, x) for x in (tokens, changed, other))
    past = (out[:, :t + 1] - base[:, :t + 1]).abs().max().item()
    across = (out_other[0] - base[0]).abs().max().item()  # sequence 0's tokens are unchanged
    assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-3  # the perturbation is seen where it may be
    if causal:
        assert past <= 1e-6 and across <= 1e-6, (past, across)
    else:
        assert past > 1e-4 and across > 1e-4, (past, across)


def test_qk_norm_with_batchnorm_rejected():
    with pytest.raises(ConfigError, match="qk_norm=True with norm='batchnorm'.*'layernorm', 'rmsnorm'"):
        BASE.replace(norm="batchnorm", qk_norm=True)


def test_running_stats_reset_between_runs():
    cfg = BASE.replace(norm="batchnorm")
    model = models.build(cfg).train()
    model(torch.randint(0, cfg.vocab_size, (2, 8)))
    bns = [m for m in model.modules() if isinstance(m, BatchNorm)]
    assert len(bns) == 2 * cfg.n_layers + 1 and any(m.running_mean.abs().max() > 0 for m in bns)
    reset_parameters(model, cfg)
    assert all(torch.equal(m.running_mean, torch.zeros(32)) and torch.equal(m.running_var, torch.ones(32))
               for m in bns)
