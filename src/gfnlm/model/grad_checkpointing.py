"""Gradient checkpointing of the decoder layers, compatible with the KV caches of the loss pass.

transformers' own checkpointing only acts in training mode and drops the cache, but the policy stays in
eval mode (no dropout) and its loss pass runs the latent tokens after a shared prompt cache. Here each
decoder layer is wrapped in a non-reentrant ``torch.utils.checkpoint``: its activations are dropped after
the forward and recomputed in the backward. A layer appends its new keys/values to the cache; before
the recompute the cache is put back as it was when the layer first ran, so the replay sees the same
keys and appends them again instead of twice. Without gradients (sampling, rewards) nothing changes.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer


def _cache_snapshot(cache) -> list[dict] | None:
    layers = getattr(cache, "layers", None)
    return None if layers is None else [dict(vars(layer)) for layer in layers]


def _cache_restore(cache, snapshot: list[dict] | None) -> None:
    if snapshot is None:
        return
    for layer, saved in zip(cache.layers, snapshot):
        vars(layer).clear()
        vars(layer).update(saved)


def _checkpointed(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        snapshot = _cache_snapshot(cache)

        def replay(*inputs):
            _cache_restore(cache, snapshot)
            return forward(*inputs, **kwargs)

        return checkpoint(replay, *args, use_reentrant=False)

    return run


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint every decoder layer of ``model``; returns how many layers were wrapped."""
    count = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and not getattr(module, "_gfnlm_checkpointed", False):
            module.forward = _checkpointed(module.forward)
            module._gfnlm_checkpointed = True
            count += 1
    if count == 0:
        raise ValueError("gradient_checkpointing: the model has no transformers decoder layers to checkpoint")
    return count
