"""Fix the number of concepts per image: truncate by score, or pad with perturbed copies."""

from __future__ import annotations

import torch


def pad_concepts(features: torch.Tensor, n: int, scores: torch.Tensor | None = None, noise: float = 0.05,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring one image's concepts to exactly ``n``.

    More than n: keep the n highest-scoring (``scores``; first n when None). Fewer: fill the rest
    with copies of randomly chosen real concepts plus Gaussian noise of std ``noise`` x the copied
    feature's RMS. None: zeros, with an all-False mask (the model then falls back to global tokens).

    Args:
        features: float [m, D].
        n: concepts to return.
        scores: optional float [m] ranking for truncation.
        noise: relative noise level of padded copies.
        generator: torch RNG (pass a seeded one for deterministic padding).

    Returns:
        features [n, D], mask bool [n] (True = real concept), source index [n] (the real concept
        each row is, or is a copy of; -1 for zero rows).
    """
    m, dim = features.shape
    if m == 0:
        return torch.zeros(n, dim), torch.zeros(n, dtype=torch.bool), torch.full((n,), -1, dtype=torch.long)
    order = torch.arange(m)
    if m > n:
        order = (torch.argsort(scores.float(), descending=True, stable=True) if scores is not None else order)[:n]
        return features[order].float(), torch.ones(n, dtype=torch.bool), order
    picks = torch.randint(0, m, (n - m,), generator=generator)
    copies = features[picks].float()
    rms = copies.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
    copies = copies + noise * rms * torch.randn(copies.shape, generator=generator)
    out = torch.cat([features.float(), copies])
    mask = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(n - m, dtype=torch.bool)])
    return out, mask, torch.cat([order, picks])
