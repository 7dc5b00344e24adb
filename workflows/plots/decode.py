"""The decode figure, written by ``python -m workflows.bench.decode --figures DIR`` (or ``--plot TABLE``) from
``decode.parquet``: median tokens/s (range over reps) against context, one panel per batch size, hue = the
attention kind (the bench's arms, MHA, GQA, MQA: ``ARM_COLORS``); the last panel the KV cache's size.
Matplotlib's default theme.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from workflows.analysis.scale import human
from workflows.plots.save import save
from workflows.plots.style import add_subtitle

ARM_COLORS = {"mha": "#1f77b4", "gqa": "#2ca02c", "mqa": "#d62728"}


def fig_decode(df: pd.DataFrame, arms):
    """Decode tokens/s vs context per batch size and the KV cache's size, with the scale subtitle; ``arms``:
    the bench's arms in order (``workflows.bench.decode.ARMS``), those in ``df`` drawn."""
    batches = sorted(df.batch_size.unique())
    arms = [a for a in arms if a in set(df.arm)]
    palette = {a: ARM_COLORS[a] for a in arms}
    contexts = sorted(df.context.unique())
    labels = {a: f"{a.upper()} ({int(df[df.arm == a].n_kv_heads.iloc[0])} KV heads)" for a in arms}
    d = df.assign(attention=df.arm.map(labels), kv_mib=df.kv_bytes / 2 ** 20)
    hue_order = [labels[a] for a in arms]
    colors = {labels[a]: palette[a] for a in arms}
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(3.4 * (len(batches) + 1), 3.4), squeeze=False)
    axes = axes[0]
    for ax, B in zip(axes, batches):
        sns.lineplot(data=d[d.batch_size == B], x="context", y="tokens_per_s", hue="attention", hue_order=hue_order,
                     palette=colors, estimator="median", errorbar=("pi", 100), marker="o", ax=ax, legend=False)
        ax.set_title(f"batch {B}")
        ax.set_ylabel("decode tokens/s" if ax is axes[0] else "")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax = axes[-1]
    kv = d.groupby(["attention", "batch_size", "context"], as_index=False).kv_mib.first()
    sns.lineplot(data=kv, x="context", y="kv_mib", hue="attention", hue_order=hue_order, palette=colors,
                 style="batch_size", marker="o", ax=ax, legend=False)
    ax.set_yscale("log")
    ax.set_title("KV cache (all layers)")
    ax.set_ylabel("MiB")
    for a in axes:
        a.set_xscale("log", base=2)
        a.xaxis.set_major_locator(FixedLocator(contexts))
        a.xaxis.set_minor_locator(NullLocator())
        a.set_xticklabels([str(c) for c in contexts])
        a.set_xlabel("context (cached tokens)")
        a.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colors[h], marker="o", label=h) for h in hue_order]
    if len(batches) > 1:
        styles = ["-", "--", ":", "-."]
        handles += [Line2D([], [], color="0.4", ls=styles[i % 4], label=f"KV: batch {B}") for i, B in enumerate(batches)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("KV-cached decoding: tokens/s vs context by batch size (median, range over reps), and cache size")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    first = d.iloc[0]
    share = d.other_cpu_share.max() if "other_cpu_share" in d.columns else float("nan")
    mha_params = d[d.arm == arms[0]].params.iloc[0]
    add_subtitle(fig, f"scale: {human(mha_params)} params ({arms[0].upper()}) · d_model {first['d_model']} · "
                      f"{first['n_layers']} layers · {first['n_heads']} heads of {first['head_dim']} · "
                      f"{first['dtype']} · {d.rep.nunique()} reps × {first['steps']} decode steps · "
                      f"{first['threads']} torch threads · device: {first['device']}"
                      + (f" · other processes took {share:.0%} of the CPU" if pd.notna(share) else ""))
    return fig


def figure(df: pd.DataFrame, out_dir, arms) -> list[Path]:
    """``decode.png`` and ``decode.pdf`` in ``out_dir``."""
    return save(fig_decode(df, arms), Path(out_dir) / "decode.png")


DRAWS = {"decode": fig_decode}
