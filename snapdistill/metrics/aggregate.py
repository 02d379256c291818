"""From per-image scores to reported numbers, with the sample count kept beside every number."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# HPSv2's benchmark: 800 prompts in each of four styles, scored in 10 consecutive chunks of 80.
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
HPS_CHUNKS = 10


def chunk_means(scores: Sequence[float], chunks: int = HPS_CHUNKS) -> np.ndarray:
    """Means of `chunks` consecutive, near-equal chunks (80 each for 800 scores; one per score below `chunks`)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no scores")
    return np.array([c.mean() for c in np.array_split(scores, min(chunks, scores.size))])


def chunked_mean_std(scores: Sequence[float], chunks: int = HPS_CHUNKS) -> tuple[float, float]:
    """HPSv2's benchmark rule: the mean and (population) std of the chunk means, not of the scores."""
    means = chunk_means(scores, chunks)
    return float(means.mean()), float(means.std())


def style_summary(scores_by_style: Mapping[str, Sequence[float]], chunks: int = HPS_CHUNKS) -> dict:
    """Per style: mean, std and count by the chunk rule; plus the average of the style means."""
    styles = {}
    for style, scores in scores_by_style.items():
        mean, std = chunked_mean_std(scores, chunks)
        styles[style] = {"mean": mean, "std": std, "n": len(scores)}
    average = float(np.mean([s["mean"] for s in styles.values()])) if styles else None
    return {"styles": styles, "average": average, "n": sum(s["n"] for s in styles.values())}


def mean_summary(values: Sequence[float]) -> dict:
    """Mean and count of per-image values."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()) if values.size else None, "n": int(values.size)}
