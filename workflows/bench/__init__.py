"""Measurements beside the grid, each a command: side-by-side training speed (``speed``), KV-cached decoding
(``decode``), the operator profile (``opprofile``), the micro-benchmarks (``micro``; the command
``python -m workflows.bench``) and the probes (``probes``: short controlled trainings that isolate one mechanism).
Every timed or trained path calls ``workflows.train.step``; imports ``models``, ``grid``, ``data``, ``train``."""
