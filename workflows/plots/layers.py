"""The grid's per-layer figures, from the statistics the runs record (declared in models/statistics.py, recorded by
``workflows.train.measure``):

- ``activations``: the residual stream's RMS and std over depth and training, for the norm-position and
  residual variants;
- ``grad_norms``: per-layer gradient norms at initialisation and at the last statistics step, same variants;
- ``attn_logits``: the max attention logit over training with and without QK-norm, at each LR;
- ``weight_norms``: each sublayer's weight norms over training (weight decay against norm inflation: Adam's
  update is blind to a parameter's scale, so without decay the norms only grow).

A figure whose variants are missing from the grid plots what exists and says what is missing in its title;
without statistics (``train.stats_every = 0``) it says so.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from models import statistics as S
from workflows.plots.tables import (Data, finite, legend_outside, lr_str, missing_note, placeholder, t_errorbar,
                                    variant_handles, variant_lw, variant_z)

SITE_ORDER = {S.EMBED: 0, "attn": 1, "attn+ffn": 1, "ffn": 2}  # depth order of the sites (models/statistics.py)
# variants whose only changes are on these axes are the depth-profile comparisons (activations, grad_norms) ...
DEPTH_AXES = {"norm_position", "residual"}
# ... and the attention-logit comparison (attn_logits)
LOGIT_AXES = {"qk_norm", "attn_softcap", "final_softcap"}
MAX_STEPS_SHOWN = 6  # training steps drawn as hue in the activation profile
WEIGHT_DECAY_SWEEP = "weight_decay"  # the sweep whose values become the hue of weight_norms
MAX_LAYERS_SHOWN = 6  # layer columns of the weight-norm figure (first, last and evenly spaced between)
WHOLE_MODEL_SITES = {S.EMBED: "token embedding", S.POS: "position embedding", S.HEAD: "output head"}  # layer -1


# ------------------------------------------------------------------------------------------------
# depth profiles (residual stream and gradients) of norm-position / residual variants
def _depth_variants(d: Data) -> tuple[list[str], list[str]]:
    vs = d.select(DEPTH_AXES)
    missing = []
    if not any(d.model_value(v, "norm_position") == "post" for v in vs):
        missing.append("post-norm variant")
    if not any(d.model_value(v, "residual") is False for v in vs):
        missing.append("no-residual variant")
    return vs, missing


def _runs_at(h: pd.DataFrame, d: Data, vs) -> pd.DataFrame:
    """Rows of ``h`` of each variant in ``vs`` at its comparison LR."""
    lr = {v: d.comparison_lr(v) for v in vs}
    h = h[h.variant.isin(vs)]
    return h[np.isclose(h.lr.astype(float), h.variant.map(lr).astype(float))]


def _no_stats_message(d: Data) -> str:
    every = (d.grid.get("train") or {}).get("stats_every")
    return ("no per-layer statistics in the history" + (f" (train.stats_every = {every})" if every == 0 else ""))


def fig_activations(d: Data):
    vs, missing = _depth_variants(d)
    h = d.history
    h = S.select(h, S.RESID_RMS, S.RESID_STD)
    h = _runs_at(h, d, vs)
    h = h[finite(h.value) & (h.value > 0)]
    if not len(h):
        return placeholder("Residual-stream activations over depth", _no_stats_message(d))
    vs = [v for v in vs if v in set(h.variant)]
    steps = np.array(sorted(h.step.unique()))
    if len(steps) > MAX_STEPS_SHOWN:
        steps = np.unique(steps[np.round(np.linspace(0, len(steps) - 1, MAX_STEPS_SHOWN)).astype(int)])
    h = h[h.step.isin(steps)].copy()
    h["site_rank"] = h.site.map(SITE_ORDER).fillna(3)
    step_colors = dict(zip(steps, sns.color_palette("viridis", len(steps))))
    fig, axes = plt.subplots(2, len(vs), figsize=(3.4 * len(vs) + 1.0, 6.2), sharey="row", squeeze=False)
    for j, v in enumerate(vs):
        hv = h[h.variant == v]
        sites = hv[["layer", "site", "site_rank"]].drop_duplicates().sort_values(["layer", "site_rank"])
        pos = {(a, b): i for i, (a, b) in enumerate(zip(sites.layer, sites.site))}
        hv = hv.assign(depth=[pos[k] for k in zip(hv.layer, hv.site)])
        ticks = ["emb" if s == S.EMBED else f"{la}.{s}" for la, s in zip(sites.layer, sites.site)]
        for i, (stat, name) in enumerate([(S.RESID_RMS, "RMS"), (S.RESID_STD, "std")]):
            ax = axes[i, j]
            hm = hv[hv.metric == stat.name]
            if len(hm):
                sns.lineplot(data=hm, x="depth", y="value", hue="step", hue_order=list(steps), palette=step_colors,
                             marker="o", ms=4, errorbar=None, ax=ax, legend=False)
            ax.set_yscale("log")
            every = max(1, math.ceil(len(ticks) / 10))
            ax.set_xticks(range(len(ticks))[::every], ticks[::every], rotation=60, ha="right", fontsize=8)
            ax.set_xlabel("")
            ax.set_ylabel(f"residual stream {name} (log)" if j == 0 else "")
            if i == 0:
                ax.set_title(f"{d.label(v)}\nη={lr_str(d.comparison_lr(v))}", fontsize=9, color=d.colors[v],
                             fontweight="bold" if v == d.baseline else "normal")
    hs = [Line2D([], [], color=step_colors[s], marker="o", ms=4, lw=1.5) for s in steps]
    legend_outside(fig, hs, [str(s) for s in steps], title="training step")
    fig.supxlabel("depth: embedding output, then the residual stream after each sublayer (layer.sublayer)",
                  fontsize=10)
    fig.suptitle("Residual-stream RMS and std over depth and training (mean over seeds)"
                 + missing_note(missing), fontsize=12)
    fig.tight_layout()
    return fig


def fig_grad_norms(d: Data):
    vs, missing = _depth_variants(d)
    h = d.history
    h = S.select(h, S.GRAD_NORM)
    h = _runs_at(h, d, vs)
    h = h[finite(h.value)]
    if not len(h):
        return placeholder("Per-layer gradient norms", _no_stats_message(d))
    vs = [v for v in vs if v in set(h.variant)]
    last = h.groupby(["variant", "seed", "lr"]).step.transform("max")
    first = h.groupby(["variant", "seed", "lr"]).step.transform("min")
    panels = [(h[h.step == first], "at initialisation (step {})"),
              (h[(h.step == last) & (last > first)], "at the last statistics step ({})")]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), sharey=True)
    for ax, (hp, title) in zip(axes, panels):
        if len(hp):
            for v in vs:
                hv = hp[hp.variant == v]
                if len(hv):
                    sns.lineplot(data=hv, x="layer", y="value", color=d.colors[v], lw=variant_lw(d, v), marker="o",
                                 errorbar=t_errorbar, ax=ax, zorder=variant_z(d, v))
            st = sorted(hp.step.unique())
            title = title.format(st[0] if len(st) == 1 else f"{st[0]}–{st[-1]}: diverged runs stop early")
        else:
            ax.text(0.5, 0.5, "no later statistics step", transform=ax.transAxes, ha="center", color="0.4")
            title = title.format("none")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (block index)")
        ax.set_ylabel("gradient L2 norm of the layer's parameters (log)")
        layers = sorted(h.layer.unique())
        ax.set_xticks(layers)
    lr = {v: d.comparison_lr(v) for v in vs}
    hs, labels = variant_handles(d, vs, {v: f" (η={lr_str(lr[v])})" for v in vs})
    legend_outside(fig, hs, labels, title="variant")
    fig.suptitle("Per-layer gradient norms (before clipping), mean with a 95% Student-t interval over seeds"
                 + missing_note(missing), fontsize=12)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# max attention logit over training, with and without QK-norm, at each LR
def fig_attn_logits(d: Data):
    vs = d.select(LOGIT_AXES)
    missing = [] if any(d.model_value(v, "qk_norm") is True for v in vs) else ["qk_norm variant"]
    if d.baseline not in vs:
        missing.insert(0, f"baseline {d.baseline!r}")
    h = d.history
    h = S.select(h, S.ATTN_LOGIT_MAX)
    h = h[h.variant.isin(vs)]
    h = h[finite(h.value)]
    if not len(h):
        return placeholder("Max attention logit", _no_stats_message(d) + missing_note(missing))
    vs = [v for v in vs if v in set(h.variant)]
    m = h.groupby(["variant", "seed", "lr", "step"], as_index=False).value.max()
    lrs = sorted(m.lr.unique())
    fig, axes = plt.subplots(1, len(lrs) + 1, figsize=(3.6 * (len(lrs) + 1) + 1, 3.9), squeeze=False, sharey=True)
    axes = axes[0]
    pos = (m.value > 0).all()
    for ax, lr in zip(axes, lrs):
        ml = m[np.isclose(m.lr, lr)]
        for v in vs:
            mv = ml[ml.variant == v]
            if len(mv):
                sns.lineplot(data=mv, x="step", y="value", color=d.colors[v], lw=variant_lw(d, v), marker="o", ms=4,
                             errorbar=t_errorbar, ax=ax, zorder=variant_z(d, v))
        div = d.runs[np.isclose(d.runs.lr, lr) & d.runs.variant.isin(vs) & d.runs.diverged]
        note = f"; diverged: {', '.join(sorted(set(div.variant)))}" if len(div) else ""
        ax.set_title(f"η = {lr_str(lr)}{note}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("max attention logit (max over layers)" if ax is axes[0] else "")
        if pos:
            ax.set_yscale("log")
    # summary: peak over training vs LR; diverged runs as x
    ax = axes[-1]
    peak = m.groupby(["variant", "seed", "lr"], as_index=False).value.max()
    peak = peak.merge(d.runs[["variant", "seed", "lr", "diverged"]], on=["variant", "seed", "lr"], how="left")
    peak["diverged"] = peak.diverged.fillna(False).astype(bool)
    for v in vs:
        pv = peak[peak.variant == v].groupby("lr", as_index=False).value.mean()
        sns.lineplot(data=pv, x="lr", y="value", color=d.colors[v], lw=variant_lw(d, v), errorbar=None, ax=ax,
                     zorder=variant_z(d, v))
    ok, bad = peak[~peak.diverged], peak[peak.diverged]
    ax.scatter(ok.lr, ok.value, c=[d.colors[v] for v in ok.variant], s=20, zorder=3)
    if len(bad):
        ax.scatter(bad.lr, bad.value, c=[d.colors[v] for v in bad.variant], marker="x", s=60, linewidths=2,
                   zorder=4)
    ax.set_xscale("log")
    if pos:
        ax.set_yscale("log")
    ax.set_xticks(lrs, [lr_str(x) for x in lrs])
    ax.minorticks_off()
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("")
    ax.set_title("peak over training (● run, × diverged)", fontsize=10)
    hs, labels = variant_handles(d, vs)
    legend_outside(fig, hs, labels, title="variant")
    fig.suptitle("Max attention logit (q·k/√d) over training, with and without QK-norm; mean with a "
                 "95% Student-t interval over seeds" + missing_note(missing), fontsize=12)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# per-layer weight norms over training
def _weight_norm_layout(h: pd.DataFrame):
    """(whole-model sites, block sites, layers shown): at most MAX_LAYERS_SHOWN layers, evenly spaced."""
    whole = [s for s in WHOLE_MODEL_SITES if s in set(h.site[h.layer < 0])]
    block = sorted(set(h.site[h.layer >= 0]), key=lambda s: SITE_ORDER.get(s, 3))
    layers = np.array(sorted(h.layer[h.layer >= 0].unique()))
    if len(layers) > MAX_LAYERS_SHOWN:
        layers = layers[np.unique(np.round(np.linspace(0, len(layers) - 1, MAX_LAYERS_SHOWN)).astype(int))]
    return whole, block, [int(x) for x in layers]


def fig_weight_norms(d: Data):
    """Frobenius norm of each sublayer's weight matrices (and the embedding) vs training step: the
    embedding side in the first column, then one column per layer and one row per sublayer site; hue =
    weight decay for a weight-decay sweep, else the variant."""
    h = d.history
    h = S.select(h, S.WEIGHT_NORM)
    h = h[finite(h.value)]
    if not len(h):
        return placeholder("Per-layer weight norms", f"no {S.WEIGHT_NORM.name} rows in the history (recorded at "
                            "statistics steps; older runs and train.stats_every = 0 have none)")
    sweep = (d.grid.get("sweeps") or {}).get(WEIGHT_DECAY_SWEEP)
    present = set(h.variant)
    if sweep and any(item["variant"] in present for item in sweep["values"]):
        items = [item for item in sweep["values"] if item["variant"] in present]
        vs = [item["variant"] for item in items]
        hue = {item["variant"]: f"weight_decay = {item['label']}" for item in items}
        colors = dict(zip(hue.values(), sns.color_palette("viridis", len(items))))
        title = "AdamW weight decay"
    else:
        vs = [v for v in d.order if v in present]
        hue = {v: v for v in vs}
        colors = {v: d.colors[v] for v in vs}
        title = "variant"
    h = _runs_at(h, d, vs)
    whole, block, layers = _weight_norm_layout(h)
    nrows, ncols = max(len(whole), len(block), 1), 1 + len(layers)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.0, 2.6 * nrows), squeeze=False, sharex=True)
    cells = [(i, 0, -1, site) for i, site in enumerate(whole)]
    cells += [(i, j + 1, layer, site) for j, layer in enumerate(layers) for i, site in enumerate(block)]
    used = {(i, j) for i, j, _, _ in cells}
    for (i, j), ax in np.ndenumerate(axes):
        ax.set_visible((i, j) in used)
    for i, j, layer, site in cells:
        ax = axes[i, j]
        hp = h[(h.layer == layer) & (h.site == site)]
        for v in vs:
            hv = hp[hp.variant == v]
            if len(hv):
                sns.lineplot(data=hv, x="step", y="value", color=colors[hue[v]], lw=variant_lw(d, v), marker="o", ms=3,
                             errorbar=t_errorbar, ax=ax, zorder=variant_z(d, v))
        ax.set_title(WHOLE_MODEL_SITES[site] if layer < 0 else f"layer {layer} · {site}", fontsize=10)
        bottom = (i + 1, j) not in used  # the lowest panel of its column carries the step axis
        ax.tick_params(labelbottom=bottom)
        ax.set_xlabel("training step" if bottom else "")
        ax.set_ylabel("Frobenius norm" if j == 0 or (j == 1 and i >= len(whole)) else "")
    hs = [Line2D([], [], color=colors[hue[v]], lw=variant_lw(d, v), marker="o", ms=4) for v in vs]
    legend_outside(fig, hs, [f"{hue[v]} (η={lr_str(d.comparison_lr(v))})" for v in vs], title=title)
    n_layers = int(h.layer.max()) + 1 if (h.layer >= 0).any() else 0
    shown = "" if len(layers) == n_layers else f" (layers {layers} of {n_layers})"
    fig.suptitle("Weight norms over training (weight matrices of each sublayer, before the step's update)"
                 f"{shown}; mean with a 95% Student-t interval over seeds", fontsize=12)
    fig.tight_layout()
    return fig


DRAWS = {"activations": fig_activations, "grad_norms": fig_grad_norms, "attn_logits": fig_attn_logits,
         "weight_norms": fig_weight_norms}
