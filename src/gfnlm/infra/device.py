"""Choose the torch device automatically; nothing in the project hard-codes one."""

import torch

from gfnlm.infra.errors import GfnlmError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise GfnlmError(f"Unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GfnlmError(f"Device {name!r} was requested but CUDA is not available; use device: auto or cpu.")
    return device
