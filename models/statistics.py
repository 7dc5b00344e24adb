"""What a training run measures, declared once, without torch: every row of a run's ``history.parquet``.

A row is (step, kind, metric, layer, site, value). Each ``Statistic`` below is one (kind, metric): its name (the
``metric`` string), its ``kind``, when it is taken, where (which (layer, site) rows it has: ``places``), its
unit, what it is, and the run-table columns ``workflows.analysis.aggregate`` derives from it. The model takes
the residual, attention-logit and log Z statistics (``forward(x, stats=True)``, models/transformer.py); the
recorder (workflows/train/measure.py) writes them and the ones it takes itself; the aggregate, the figures
(workflows/plots/layers.py) and the claims read them through these names. ``tests/train/test_statistics.py``
checks that a run records exactly what is declared here and that every name they read is declared.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import choices

# ---- where a statistic is taken: the (layer, site) of its rows ----------------------------------------------
RUN = "run"  # one row per record: layer -1, site ""
LAYER = "layer"  # one row per block: layer 0 … L-1, site ""
RESIDUAL = "residual"  # the residual stream: the embedding output (-1, "embed"), then after each sublayer (i, site)
WEIGHTS = "weights"  # the weight matrices of each sublayer (i, site) and of the embedding side (-1, site)

# the residual-stream sites of a block, one per sublayer (the stream after it, past its norm wrapper: what the next
# sublayer reads); models/blocks.py names its sublayers by them
BLOCK_SITES = choices.implements(choices.BLOCKS, {"serial": ("attn", "ffn"), "parallel": ("attn+ffn",)})
EMBED = "embed"  # the token embedding (the residual stream's start; its weight matrix, also a tied head's)
POS = "pos"  # a learned position table (position = "learned")
HEAD = "head"  # an untied output head
WEIGHT_SITES = (EMBED, POS, HEAD)  # layer -1 of WEIGHTS, in this order

# the moments the model takes of the residual stream at each site (a row of its ``stats[RESIDUAL]``)
RESIDUAL_MOMENTS = ("mean", "std", "rms", "min", "max")

# when a statistic is taken
EVERY_STEP = "every step"
EVAL_STEPS = "evaluation steps"  # step 0, every train.eval_every steps and the last step
STATS_STEPS = "statistics steps"  # every train.stats_every steps from step 0 (none when 0)


@dataclass(frozen=True)
class Statistic:
    kind: str  # the history's ``kind`` column
    name: str  # its ``metric`` column
    when: str  # EVERY_STEP, EVAL_STEPS or STATS_STEPS
    where: str  # RUN, LAYER, RESIDUAL or WEIGHTS (``places``)
    unit: str
    description: str
    columns: tuple[str, ...] = ()  # runs.csv columns workflows.analysis.aggregate derives from it

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name


# ---- the statistics ---------------------------------------------------------------------------------------
TRAIN_LOSS = Statistic("train", "loss", EVERY_STEP, RUN, "nats",
                       "the batch's cross-entropy (without the z-loss term)", ("final_train_loss",))
TRAIN_GRAD_NORM = Statistic("train", "grad_norm", EVERY_STEP, RUN, "L2 norm",
                            "global gradient norm before clipping", ("grad_spike_score",))
TRAIN_LR = Statistic("train", "lr", EVERY_STEP, RUN, "learning rate", "the step's learning rate")
VAL_LOSS = Statistic("val", "loss", EVAL_STEPS, RUN, "nats",
                     "cross-entropy on the validation windows (the learning curve; metrics.json's last_val_loss)")
VAL_BPB = Statistic("val", "bpb", EVAL_STEPS, RUN, "bits/byte", "the validation loss in bits per byte of text")
RESID_MEAN = Statistic("layer", "resid_mean", STATS_STEPS, RESIDUAL, "activation units",
                       "mean of the residual stream over the batch, positions and channels")
RESID_STD = Statistic("layer", "resid_std", STATS_STEPS, RESIDUAL, "activation units",
                      "standard deviation of the residual stream")
RESID_RMS = Statistic("layer", "resid_rms", STATS_STEPS, RESIDUAL, "activation units",
                      "root mean square of the residual stream")
RESID_MAXABS = Statistic("layer", "resid_maxabs", STATS_STEPS, RESIDUAL, "activation units",
                         "largest |entry| of the residual stream (max of |min| and |max|)")
ATTN_LOGIT_MAX = Statistic("layer", "attn_logit_max", STATS_STEPS, LAYER, "logit",
                           "largest causal attention logit q·k·scale before any soft-cap (NaN: a custom "
                           "attention module that records none)", ("max_attn_logit",))
GRAD_NORM = Statistic("layer", "grad_norm", STATS_STEPS, LAYER, "L2 norm",
                      "gradient norm of the block's parameters before clipping")
UPDATE_RATIO = Statistic("layer", "update_ratio", STATS_STEPS, LAYER, "ratio",
                         "‖Δw‖ / ‖w‖ of the block's parameters over the step's update")
WEIGHT_NORM = Statistic("layer", "weight_norm", STATS_STEPS, WEIGHTS, "Frobenius norm",
                        "norm of the weight matrices (no gains, no biases) before the step's update",
                        ("final_weight_norm",))
LOGZ_MEAN = Statistic("logits", "logz_mean", STATS_STEPS, RUN, "nats",
                      "mean over positions of the output log-partition log Z = logsumexp(logits)",
                      ("final_logz_mean",))
LOGZ_MAX = Statistic("logits", "logz_max", STATS_STEPS, RUN, "nats", "max over positions of log Z")

# every statistic, in the order a run records them; by (kind, metric)
STATISTICS: dict[tuple[str, str], Statistic] = {s.key: s for s in (
    TRAIN_LOSS, TRAIN_GRAD_NORM, TRAIN_LR, VAL_LOSS, VAL_BPB,
    RESID_MEAN, RESID_STD, RESID_RMS, RESID_MAXABS, ATTN_LOGIT_MAX, GRAD_NORM, UPDATE_RATIO, WEIGHT_NORM,
    LOGZ_MEAN, LOGZ_MAX)}


def places(stat: Statistic, cfg) -> list[tuple[int, str]]:
    """The (layer, site) rows ``stat`` has at each step it is taken, for the model of ``cfg`` (a ModelConfig).
    WEIGHTS: the built-in modules' matrices (a custom module without any has no row)."""
    blocks = range(cfg.n_layers)
    sites = BLOCK_SITES[cfg.block]
    if stat.where == RUN:
        return [(-1, "")]
    if stat.where == LAYER:
        return [(i, "") for i in blocks]
    if stat.where == RESIDUAL:
        return [(-1, EMBED)] + [(i, s) for i in blocks for s in sites]
    if stat.where == WEIGHTS:
        side = [EMBED] + ([POS] if cfg.position == "learned" else []) + ([] if cfg.tie_embeddings else [HEAD])
        return [(i, s) for i in blocks for s in sites] + [(-1, s) for s in side]
    raise ValueError(f"{stat.name}: unknown place {stat.where!r}")


def select(history, *stats: Statistic):
    """The rows of ``stats`` in a long-format history (a DataFrame with ``kind`` and ``metric`` columns), in the
    history's order."""
    mask = False
    for s in stats:
        mask = mask | ((history.kind == s.kind) & (history.metric == s.name))
    return history[mask]
