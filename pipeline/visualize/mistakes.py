"""Which test images to show: a seeded, class-balanced sample, and the worst mistakes."""

from __future__ import annotations

import numpy as np

from pipeline.serving.inference import predicted_labels

# Clipping as keras.losses.binary_crossentropy does, so a certain wrong answer has a
# finite loss and ties among them keep their order.
EPSILON = 1e-7


def losses(p_dog: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each prediction."""
    p = np.clip(p_dog.astype(np.float64), EPSILON, 1 - EPSILON)
    return -np.where(labels == 1, np.log(p), np.log(1 - p))


def worst_mistakes(p_dog: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the misclassified images of highest loss, worst first (fewer than
    `count` when the model makes fewer mistakes)."""
    wrong = np.flatnonzero(predicted_labels(p_dog) != labels)
    order = np.argsort(-losses(p_dog[wrong], labels[wrong]), kind="stable")
    return wrong[order[:count]]


def balanced_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` indices drawn without replacement, half of each class (as far as the
    classes allow), cats first, each class in drawing order."""
    rng = np.random.default_rng(seed)
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in (0, 1)}
    cats = min(len(per_class[0]), max(count - len(per_class[1]), count // 2))
    dogs = min(len(per_class[1]), count - cats)
    return np.concatenate([per_class[0][:cats], per_class[1][:dogs]])
