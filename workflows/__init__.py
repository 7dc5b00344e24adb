"""archbench's pipeline, one sub-package per role, in the order the data flows:

- ``grid``: what to run. A config expands into runs (variants × seeds × LRs, sweeps, the ladder's rungs); no torch.
- ``data``: the corpus, tokenised once into memory-mapped token files, and the n-gram references on it.
- ``train``: the training loop, the one training step every timed or profiled path calls, the per-layer statistics
  it records, the device and its memory budget.
- ``bench``: measurements beside the grid: side-by-side speed, KV-cached decoding, the operator profile, the
  micro-benchmarks and the probes, all built on ``train``'s step.
- ``analysis``: run records → tables: aggregate, flags, LR selection and the pilot, statistics, the ladder's
  multipliers, replication.
- ``plots``: every figure of the project: one style, one ``save``, one registry of names that the rules read.
- ``claims``: the registry of published claims and the scorecard that judges them.

A package may import the packages above it in this list and ``workflows.io`` (atomic writes), never one below
it, with one exception: a command's ``main`` (in ``analysis``, ``bench`` or ``claims``) may call ``plots`` to draw
what it computed. ``tests/pipeline/test_imports.py`` checks that no import cycle exists.

The Snakemake side keeps its conventions: ``rules/``, ``schemas/``, ``profiles/``, ``report/``, ``cluster/``; each
rule calls a command ``python -m workflows.<package>[.<module>]``.
"""
