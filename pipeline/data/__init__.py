"""The data stages: download, split, prepare, and the tf.data input pipelines."""

import numpy as np

# The two classes, in label order: 0 = cat, 1 = dog (the sigmoid output is P(dog)).
CLASSES = ("cat", "dog")


def predicted_labels(p_dog) -> np.ndarray:
    """0/1 labels of P(dog) values: a dog above one half, as Keras' binary accuracy counts."""
    return (np.asarray(p_dog) > 0.5).astype(int)
