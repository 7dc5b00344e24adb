"""Every figure of the project: one style, one ``save`` (PNG + PDF, byte-reproducible), one registry of figure
names that the rules read, one module per family of figures. Reads the tables that ``analysis``, ``bench`` and
``claims`` write; nothing outside this package calls ``savefig``.

- ``registry``: every figure's name, the command that writes it and the module that draws it (pure Python: the
  rules import it while parsing the workflow);
- ``style``: the themes, the variant order and palette, the fixed jitter seed, the scale subtitle;
- ``save``: ``save(fig, path_png)``, the PNG and the PDF beside it, atomically, with fixed metadata;
- ``tables``: the grid's tables (``Data``, ``load``) and the helpers the grid's figures share;
- the families, each with ``DRAWS`` (figure name → the function that draws it): ``runs`` (loss_by_variant,
  loss_vs_lr, divergence_heatmap, throughput, loss_curves), ``layers`` (activations, grad_norms, attn_logits,
  weight_norms), ``sweeps`` (sweep_<name>), ``ladder`` (ladder_curves, compute_multiplier), ``decode``,
  ``opprofile`` (op_profile), ``claims`` (claims, claims_trajectory);
- ``render``: the grid's figures as a command, ``python -m workflows.plots`` (``__main__``).

This ``__init__`` imports nothing, so ``workflows.plots.registry`` stays free of matplotlib.
"""
