"""tf.data input pipelines over the prepared arrays: shuffle by index, batch, prefetch.

Batches are gathered from the NumPy arrays themselves (`tf.numpy_function`), so the images
(or cached activations) are in memory once. Capturing them as a tensor in the pipeline's
functions held them two or three times more: `tf.constant` copies the array, and tf.data
copies the constant again into the graph it optimises, once per dataset made (finetune's
cached copies, docs/performance.md). Prefetch overlaps input with
training; the batches and their order are the same as gathering from a tensor.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

PARALLEL_BATCHES = 2  # gathered at once, and ready ahead of the step that takes them


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    repeat: bool = False,
) -> tf.data.Dataset:
    labels = labels.astype(np.float32).reshape(-1, 1)
    indices = tf.data.Dataset.range(len(images))
    if training:
        indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        indices = indices.repeat()
    stored = tf.as_dtype(images.dtype)  # uint8 pixels, or float32/bfloat16 activations
    dtype = tf.float32 if stored == tf.uint8 else stored

    def take(batch_indices: np.ndarray):
        return images[batch_indices], labels[batch_indices]

    def gather(batch_indices):
        x, y = tf.numpy_function(take, [batch_indices], (stored, tf.float32), stateful=False)
        x.set_shape((None, *images.shape[1:]))
        y.set_shape((None, 1))
        return tf.cast(x, dtype), y

    # Fixed parallelism, not AUTOTUNE: a batch is a NumPy index, and the autotuning thread
    # makes every pass over a finite dataset end late (its freed iterator waits for it).
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        indices.batch(batch_size)
        .map(gather, num_parallel_calls=PARALLEL_BATCHES)
        .prefetch(PARALLEL_BATCHES)
        .with_options(options)
    )
