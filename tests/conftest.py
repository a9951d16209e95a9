"""Tiny randomly initialized models built in the test session, so the suite stays fast and offline."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

# Property tests: enough examples to matter, no per-example deadline on a loaded 2-core machine, and
# tmp_path shared across the examples of one test (each example overwrites its files).
settings.register_profile("gfnlm", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("gfnlm")

CHARS = list(" 0123456789,.:;abcdefghijklmnopqrstuvwxyzRT\n+-=?QA")


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, init: float = 0.3):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=init, attn_implementation="sdpa",
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def char_tokenizer(chars=None):
    """One token per character (a BPE with no merges), so numbers span several tokens as in SmolLM2."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars or CHARS)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A Hugging Face folder with a tiny Llama and a character tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), seed=0, hidden=32, init=0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class FixedEncoder:
    """Each text's embedding is a fixed random unit vector (so diversity can be computed exactly)."""

    def __init__(self, texts, dim=8):
        g = torch.Generator().manual_seed(1)
        self.vectors = {t: torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0) for t in texts}

    def encode(self, texts, **_):
        return torch.stack([self.vectors[t] for t in texts])
