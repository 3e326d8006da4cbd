"""Next-token choice: greedy, or temperature + top-p (nucleus) sampling with a seeded generator."""

from __future__ import annotations

import numpy as np


def choose(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator | None) -> int:
    """``temperature <= 0`` (or no generator) is greedy: the first maximum, deterministic."""
    if temperature <= 0 or rng is None:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]  # smallest set reaching top_p
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))
