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
in the training thread: a gather is a small share of a step. Under Keras' DataParallel (JAX
on several devices) every batch is split evenly across the devices: ArrayBatches trims or
fills a last partial batch to a multiple of them (`multiple`), and `predictions` cuts the
filled rows off again.
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
    multiple: int | None = None,
):
    """Batches of (images, labels) as float32 (uint8 pixels) or the arrays' own dtype; of
    images alone where `labels` is None (what predict reads). `multiple`: the devices each
    batch is split across, off TensorFlow (None: the active distribution's)."""
    if keras.backend.backend() != "tensorflow":
        multiple = multiple or batch_devices()
        return ArrayBatches(images, labels, batch_size, training, seed, repeat, multiple=multiple)
    if labels is None:
        dataset = _tf_dataset(images, np.zeros(len(images)), batch_size, training, seed, repeat)
        return dataset.map(lambda x, y: x)
    return _tf_dataset(images, labels, batch_size, training, seed, repeat)


def image_batches(
    images: np.ndarray,
    batch_size: int,
    transform: Callable | None = None,
    multiple: int | None = None,
):
    """The images in order, in batches, each through `transform` (an augmentation layer,
    say) if given: tf.data's map on TensorFlow, a call per batch elsewhere. Off TensorFlow
    the batch size is rounded up to a multiple of the devices (`multiple`, as make_dataset's):
    it is no param, and these batches are only predicted on."""
    if keras.backend.backend() != "tensorflow":
        multiple = multiple or batch_devices()
        size = -(-batch_size // multiple) * multiple
        return ArrayBatches(images, None, size, transform=transform, multiple=multiple)
    dataset = _tf_dataset(images, np.zeros(len(images)), batch_size, False, 0, False)
    return dataset.map(lambda x, y: x if transform is None else transform(x))


def batch_devices() -> int:
    """The devices Keras splits each batch across: the batch axis of its distribution
    (DataParallel, on JAX), else 1."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return mesh.shape[mesh.axis_names.index(distribution.batch_dim_name)]


def predictions(model: keras.Model, dataset, verbose="auto") -> np.ndarray:
    """model.predict over make_dataset's or image_batches' batches, one output a row: the
    rows ArrayBatches repeats to fill a last batch for the devices are cut off."""
    outputs = model.predict(dataset, verbose=verbose)
    return outputs[: len(dataset.images)] if isinstance(dataset, ArrayBatches) else outputs


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
    whose state a resumed run does not have.

    `multiple` > 1 (DataParallel over that many devices, which must divide `batch_size`): a
    last partial batch is cut or filled to a multiple of it. Training, a pass reads the
    largest multiple of its rows. Evaluating and predicting, the last batch repeats its last
    row, and batches with labels carry sample weights: 0 on the repeated rows, (n + pads) / n
    on the n real ones, so that Keras' loss (summed over a batch, over its row count) and its
    weighted accuracy (compile_model) come out as the real rows' means, as on one device;
    `predictions` cuts the repeated rows off. A repeated stream has no partial batch."""

    def __init__(self, images, labels, batch_size, training=False, seed=0, repeat=False, **kw):
        super().__init__(workers=1)  # in the training thread: the order is the stream's
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.labels = None if labels is None else labels.astype(np.float32).reshape(-1, 1)
        self.training, self.repeat = training, repeat
        self.transform = kw.pop("transform", None)
        self.multiple = kw.pop("multiple", 1)  # the devices each batch is split across
        if batch_size % self.multiple:
            raise ValueError(f"batch size {batch_size}: {self.multiple} devices cannot split it")
        self.first_batch, self.passes_begun = 0, 0  # where the stream starts (advanced)
        self._order: tuple[int, np.ndarray] | None = None  # the last pass's permutation

    @property
    def pass_rows(self) -> int:
        """The rows one pass reads: all, or (training) the largest multiple of `multiple`."""
        n = len(self.images)  # training leaves out its permutation's last: other rows each pass
        return n - n % self.multiple if self.training else n

    @property
    def pads(self) -> int:
        """The last row's copies that fill the last batch of a pass that is not training."""
        return 0 if self.training or self.repeat else -len(self.images) % self.multiple

    @property
    def num_batches(self) -> int | None:
        return None if self.repeat else -(-self.pass_rows // self.batch_size)

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
            rows = self.order(self.passes_begun)[: self.pass_rows]
            rows = rows[index * size : (index + 1) * size]
            return np.pad(rows, (0, -len(rows) % self.multiple), mode="edge")  # `pads`
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
        if self.labels is None:
            return (x,)
        if not self.pads:
            return x, self.labels[rows]
        return x, self.labels[rows], self.weights(index, len(rows))

    def weights(self, index: int, count: int) -> np.ndarray:
        """The sample weights of batch `index` (`count` rows) of a pass with pads."""
        n = len(self.images)
        real = min(count, n - index * self.batch_size)
        return np.where(np.arange(count) < real, (n + self.pads) / n, 0.0).astype(np.float32)
