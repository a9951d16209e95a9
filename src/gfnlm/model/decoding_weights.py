"""Faster no-grad decoding: the LoRA adapter folded into the weights, and skinny matmuls split across threads.

Decoding a few rows at a time multiplies a handful of vectors by every weight matrix. Unfolded, each LoRA
projection adds two more small products and their dispatch (a third of a decode step at r = 64); folded,
W + s B A is one matrix. The folded weights live in one temporary buffer: the model's own weights are
never written, so the base model and the training graph see exactly the tensors they had. On CPU a
product with few rows runs on one thread whatever the thread count; split by output rows into a batched
product, each thread takes a share.

Folding applies only where it is exact up to float rounding: plain LoRA (no DoRA or other variant, no
hooks on the adapter's layers, such as the temperature-conditional policy's) with the weights and the
adapter in one dtype (a bfloat16 base would round the small update away). Otherwise the layers run as they are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer

SPLIT_ROWS = 32  # up to this many rows a product is split across threads (more rows already use every thread)


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias); with few rows, as one batched product over torch's threads."""
    parts = torch.get_num_threads()
    rows = x.numel() // x.shape[-1]
    if parts < 2 or rows > SPLIT_ROWS or weight.shape[0] % parts or x.device.type != "cpu":
        return torch.nn.functional.linear(x, weight, bias)
    flat = x.reshape(1, rows, x.shape[-1]).expand(parts, rows, x.shape[-1])
    out = torch.bmm(flat, weight.view(parts, -1, weight.shape[1]).transpose(1, 2))  # (parts, rows, out / parts)
    out = out.transpose(0, 1).reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


def _foldable(layer: LoraLayer) -> bool:
    base = layer.get_base_layer()
    if not isinstance(base, torch.nn.Linear) or layer.merged or getattr(layer, "lora_variant", {}):
        return False
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        a, b = layer.lora_A[name], layer.lora_B[name]
        if (a._forward_hooks or b._forward_hooks or a.weight.dtype != base.weight.dtype
                or not isinstance(layer.lora_dropout[name], torch.nn.Identity)):
            return False
    return True


@contextmanager
def decoding_weights(model: torch.nn.Module):
    """Inside this block (no grad), every linear layer of ``model`` runs as one product with its adapter
    folded in (see the module's note); on leaving, the layers run as before."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not all(_foldable(layer) for layer in layers):
        yield model
        return
    folded = {id(layer.get_base_layer()) for layer in layers}
    plain = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m) not in folded]
    adapted = [layer for layer in layers if not layer.disable_adapters
               and any(name in layer.lora_A for name in layer.active_adapters)]
    adapted_ids = {id(layer) for layer in adapted}
    buffer = None
    if adapted:  # one allocation, handed back to the system as a whole
        weights = [layer.get_base_layer().weight for layer in adapted]
        buffer = torch.empty(sum(w.numel() for w in weights), dtype=weights[0].dtype, device=weights[0].device)
    patched = []
    try:
        with torch.no_grad():
            offset = 0
            for layer in layers:
                base = layer.get_base_layer()
                weight = base.weight
                if id(layer) in adapted_ids:
                    weight = buffer[offset: offset + base.weight.numel()].view_as(base.weight)
                    offset += base.weight.numel()
                    source = base.weight
                    for name in layer.active_adapters:
                        if name in layer.lora_A:  # W + s B A written straight into the buffer
                            torch.addmm(source, layer.lora_B[name].weight, layer.lora_A[name].weight,
                                        alpha=layer.scaling[name], out=weight)
                            source = weight
                layer.forward = _runner(weight, base.bias)
                patched.append(layer)
            for module in plain:
                module.forward = _runner(module.weight, module.bias)
                patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward
        del buffer


def _runner(weight: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return split_linear(x, weight, bias)
    return forward
