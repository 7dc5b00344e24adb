"""The values every categorical architecture axis allows, declared once, without torch.

``ModelConfig`` (models/config.py) validates against these, and the module that implements an axis reads them:
its table of implementations (``NORMS`` in norms.py, ``INITS`` in init.py, ...) is built with ``implements``,
which fails at import when the table and the declared values differ. Adding a value: declare it here, implement
it there. ``norm``, ``ffn`` and ``attention_module`` also take a user's class, ``"module.path:ClassName"``
(models/custom.py).
"""
from __future__ import annotations

NORM_POSITIONS = ("pre", "post", "sandwich", "reordered")  # models/blocks.py
# positions whose residual stream is not normalised at the end of the stack get a final norm
FINAL_NORM = {"pre": True, "post": False, "sandwich": True, "reordered": True}
NORMS = ("layernorm", "rmsnorm", "batchnorm", "none")  # models/norms.py
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")  # plain FFNs W2 φ(W1 x) (models/ffn.py)
GATED = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}  # gated FFN -> the activation of its gate
FFNS = ACTIVATIONS + tuple(GATED)
BLOCKS = ("serial", "parallel")  # models/blocks.py
POSITIONS = ("rope", "learned", "sinusoidal", "none")  # models/positions.py
INITS = ("gpt2", "gpt2_unscaled", "xavier", "kaiming")  # models/init.py
ATTN_SCALES = ("inv_sqrt_d", "inv_d", "none")  # the factor on q·kᵀ: 1/√d_k, 1/d_k, 1 (models/attention.py)

# field name -> allowed values, for every categorical axis
CHOICES: dict[str, tuple[str, ...]] = {
    "norm_position": NORM_POSITIONS,
    "norm": NORMS,
    "ffn": FFNS,
    "block": BLOCKS,
    "position": POSITIONS,
    "init": INITS,
    "attn_scale": ATTN_SCALES,
}
USER_FIELDS = ("norm", "ffn", "attention_module")  # the fields that take a user class (models/custom.py)


def is_custom(value) -> bool:
    """Whether an axis value names a user class, ``"module.path:ClassName"``."""
    return isinstance(value, str) and ":" in value


def is_gated(ffn: str) -> bool:
    return ffn in GATED


def implements(declared: tuple[str, ...], table: dict) -> dict:
    """``table`` (value -> implementation) after checking that it implements exactly the ``declared`` values, in
    their order: a value declared here without an implementation, or the reverse, fails at import."""
    if tuple(table) != tuple(declared):
        raise ImportError(f"implemented values {list(table)} differ from the declared {list(declared)} "
                          "(models/choices.py)")
    return table
