"""Names of the sampling methods the evaluation harness compares."""

from gfnlm.baselines.decoding import BASELINES

# Amortize, then correct: importance sampling / SMC with the trained policy or the base model as proposal.
CORRECTED = ("gfn_is", "gfn_smc", "base_is", "base_smc")
DEFAULT_METHODS = ("gfn",) + BASELINES
ALL_METHODS = DEFAULT_METHODS + CORRECTED
# Base-model draws until one has a non-zero reward: for targets with hard constraints.
REJECTION = "base_rejection"
