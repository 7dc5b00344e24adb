"""Training: the loop a run job executes (``loop``; the command ``python -m workflows.train``), the one training
step that the loop, the speed bench, the operator profile and the probes all call (``step``), the per-layer
statistics recorder (``measure``), the device, its peak rates (``device``) and memory budget (``memory``).
Imports ``models``, ``grid`` and ``data``."""
