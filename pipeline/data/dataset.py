"""tf.data input pipelines over the prepared uint8 arrays: shuffle by index, batch, prefetch.

Gathering batches by index keeps one copy of the images in memory (a shuffle buffer of
elements would hold a second one), and prefetch overlaps input with training.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    repeat: bool = False,
) -> tf.data.Dataset:
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.float32).reshape(-1, 1))
    indices = tf.data.Dataset.range(len(images))
    if training:
        indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        indices = indices.repeat()
    dtype = tf.float32 if images.dtype == np.uint8 else images.dtype

    def gather(batch_indices):
        return tf.cast(tf.gather(images_t, batch_indices), dtype), tf.gather(
            labels_t, batch_indices
        )

    return (
        indices.batch(batch_size)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
