"""gfnlm: amortized inference in language models by GFlowNet fine-tuning.

A LoRA policy q(Z | X) is trained with (sub-)trajectory balance so that it samples latent text Z
in proportion to an unnormalized posterior R(Z) that a language model defines; the same weights
with the adapter disabled score the rewards. ``gfnlm.train`` trains a posterior of your own
(``gfnlm.api``); the command line is ``gfnlm``.
"""

from gfnlm.infra.errors import GfnlmError

__version__ = "0.1.0"
__all__ = ["GfnlmError", "__version__", "contains", "function", "lm", "load", "not_contains", "regex", "train"]


def __getattr__(name: str):
    # The API imports torch and transformers: only when it is used, so `import gfnlm` stays light.
    if name in ("contains", "function", "lm", "load", "not_contains", "regex", "train", "Run"):
        from gfnlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'gfnlm' has no attribute {name!r}")
