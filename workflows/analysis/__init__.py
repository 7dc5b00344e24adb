"""Run records → tables: the run table and its flags (``aggregate``, ``flags``), the LR pilot's assignment
(``pilot``), LR selection and the equal-LR view (``selection``), seed-level statistics (``stats``), the ladder's
compute multipliers (``ladder``), replication on fresh seeds (``replicate``) and the scale line every figure and
table prints (``scale``). Pandas, numpy, scipy and statsmodels only: no torch, no matplotlib."""
