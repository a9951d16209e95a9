"""Names of the sampling methods the evaluation harness compares (kept import-light for validation)."""

BASELINES = ("greedy", "beam", "diverse_beam", "nucleus", "sampling", "tempered")
ALL_METHODS = ("gfn",) + BASELINES
