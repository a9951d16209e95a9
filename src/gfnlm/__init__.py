"""gfnlm: amortized inference in language models by GFlowNet fine-tuning.

A LoRA policy q(Z | X) is trained with (sub-)trajectory balance so that it samples latent text Z
in proportion to an unnormalized posterior R(Z) that a language model defines; the same weights
with the adapter disabled score the rewards.
"""

from gfnlm.infra.errors import GfnlmError

__version__ = "0.1.0"
__all__ = ["GfnlmError", "__version__"]
