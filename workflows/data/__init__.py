"""The corpus: fetched once, tokenised into memory-mapped token files with a meta.json (``corpus``; the command
``python -m workflows.data``), the batches and fixed evaluation windows the runs read, and the smoothed n-gram
references scored on the same windows (``ngram``). Imports ``grid``'s checks, never ``train`` or later packages."""
