"""What to run: a pipeline config expands into runs (variants × seeds × LRs; sweeps; the ladder's rungs), each with a
fingerprint that deduplicates it. Pure Python: parsing a Snakefile imports this and must not import torch; it may
import ``models``' configuration (``models.config``, ``models.checks``) but no ``nn`` module."""
