"""A real Keras model file small enough to save in a fixture: photos of 32 px in, P(dog) out."""

from __future__ import annotations

from pathlib import Path


def save_tiny_keras(path: Path) -> Path:
    import keras  # here: importing this module costs no TensorFlow

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.save(path)
    return path
