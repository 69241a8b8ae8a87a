"""Input pipelines over the prepared arrays: shuffle by index, batch, and on TensorFlow prefetch.

On TensorFlow, tf.data: batches are gathered from the NumPy arrays themselves
(`tf.numpy_function`), so the images (or cached activations) are in memory once. Capturing
them as a tensor in the pipeline's functions held them two or three times more:
`tf.constant` copies the array, and tf.data copies the constant again into the graph it
optimises, once per dataset made (finetune's cached copies, docs/performance.md). Prefetch
overlaps input with training; the batches and their order are the same as gathering from a
tensor.

On any other backend (JAX: docs/backends.md), `ArrayBatches`, a Keras PyDataset that needs
no TensorFlow: the same gathers from the arrays in place, uint8 cast to float32 per batch,
shuffled by index with a seeded NumPy generator per pass. Its order is not tf.data's (another
generator), but it is a function of the seed and the batch's place in the stream alone, so
a resumed run reads what the uninterrupted one read (`advanced`). Its batches are gathered
in the training thread: a gather is a small share of a step.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

PARALLEL_BATCHES = 2  # gathered at once, and ready ahead of the step that takes them


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    repeat: bool = False,
):
    """Batches of (images, labels) as float32 (uint8 pixels) or the arrays' own dtype; of
    images alone where `labels` is None (what predict reads)."""
    if keras.backend.backend() != "tensorflow":
        return ArrayBatches(images, labels, batch_size, training, seed, repeat)
    if labels is None:
        dataset = _tf_dataset(images, np.zeros(len(images)), batch_size, training, seed, repeat)
        return dataset.map(lambda x, y: x)
    return _tf_dataset(images, labels, batch_size, training, seed, repeat)


def image_batches(images: np.ndarray, batch_size: int, transform: Callable | None = None):
    """The images in order, in batches, each through `transform` (an augmentation layer,
    say) if given: tf.data's map on TensorFlow, a call per batch elsewhere."""
    if keras.backend.backend() != "tensorflow":
        return ArrayBatches(images, None, batch_size, transform=transform)
    dataset = _tf_dataset(images, np.zeros(len(images)), batch_size, False, 0, False)
    return dataset.map(lambda x, y: x if transform is None else transform(x))


def _tf_dataset(images, labels, batch_size, training, seed, repeat):
    import tensorflow as tf

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


class ArrayBatches(keras.utils.PyDataset):
    """Batches gathered from NumPy arrays, for Keras' fit, evaluate and predict on any backend.

    Not repeated: one pass an epoch, in order, or (training) in the order of pass p, a
    permutation drawn from (seed, p); p counts the passes Keras begins (`on_epoch_begin`),
    one more per fit than its epochs (Keras reads a batch to build the model first), the
    same in an interrupted run and in its resumption. Repeated: one endless stream of the
    passes' permutations end to end, batched across their joins as tf.data's
    shuffle-repeat-batch does; fit reads it from its start (`steps_per_epoch` a time).
    Fit it with `shuffle=False`: else Keras reorders a pass's batches with Python's `random`,
    whose state a resumed run does not have."""

    def __init__(self, images, labels, batch_size, training=False, seed=0, repeat=False, **kw):
        super().__init__(workers=1)  # in the training thread: the order is the stream's
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.labels = None if labels is None else labels.astype(np.float32).reshape(-1, 1)
        self.training, self.repeat = training, repeat
        self.transform = kw.pop("transform", None)
        self.first_batch, self.passes_begun = 0, 0  # where the stream starts (advanced)
        self._order: tuple[int, np.ndarray] | None = None  # the last pass's permutation

    @property
    def num_batches(self) -> int | None:
        return None if self.repeat else -(-len(self.images) // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches or 0

    def on_epoch_begin(self):
        self.passes_begun += 1

    def advanced(self, epochs_done: int, steps_per_epoch: int) -> ArrayBatches:
        """This dataset as epoch `epochs_done` + 1 of an uninterrupted fit reads it."""
        if self.repeat:
            self.first_batch = epochs_done * steps_per_epoch
        else:
            self.passes_begun = epochs_done
        return self

    def order(self, pass_number: int) -> np.ndarray:
        """The row order of one pass: the rows in order, or (training) the seed's shuffle."""
        if not self.training:
            return np.arange(len(self.images))
        if self._order is None or self._order[0] != pass_number:
            rng = np.random.default_rng([self.seed, pass_number])
            self._order = (pass_number, rng.permutation(len(self.images)))
        return self._order[1]

    def rows(self, index: int) -> np.ndarray:
        """The rows of batch `index` of the current epoch (of the stream, if repeated)."""
        n, size = len(self.images), self.batch_size
        if not self.repeat:
            return self.order(self.passes_begun)[index * size : (index + 1) * size]
        start = (self.first_batch + index) * size
        parts = []
        while size:
            pass_number, at = divmod(start, n)
            part = self.order(pass_number)[at : at + size]
            parts.append(part)
            start, size = start + len(part), size - len(part)
        return np.concatenate(parts)

    def __getitem__(self, index: int):
        rows = self.rows(index)
        x = self.images[rows]
        x = x.astype(np.float32) if x.dtype == np.uint8 else x
        if self.transform is not None:
            x = self.transform(x)
        return (x,) if self.labels is None else (x, self.labels[rows])
