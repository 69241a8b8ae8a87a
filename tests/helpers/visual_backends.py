"""pipeline/visualize on the Keras backend of this process, for tests that compare backends:

    python -m tests.helpers.visual_backends OUT_DIR IMAGES.npy MODEL.keras...

writes Grad-CAM heatmaps (and their upsampled copies), P(dog), filter patterns and one
image's activations of each saved model to OUT_DIR/<model>.npz. The test runs it under TensorFlow and under JAX
(with `import tensorflow` failing) on the same file and compares the two.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

SIZE = 32
ASCENT = {"count": 4, "steps": 5, "step_size": 5.0, "seed": 0}


def jax_without_tensorflow(folder: Path) -> dict:
    """Environment variables for a process on Keras' JAX backend where `import tensorflow`
    fails, as where TensorFlow is not installed: a package of that name first on the path."""
    blocker = folder / "tensorflow"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text('raise ImportError("no TensorFlow in this process")\n')
    return {"KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


def tiny_models(folder: Path) -> dict[str, Path]:
    """Three small models saved as .keras: convs of its own ("flat"), the same computing in
    bfloat16 ("mixed", train.runtime.mixed_precision) and a nested conv base ("nested", as
    frozen_aug and finetune hold theirs)."""
    import keras

    keras.utils.set_random_seed(0)
    flat, nested = _flat(), _nested()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = _flat("mixed")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(flat.get_weights())
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for model in (flat, mixed, nested):
        paths[model.name] = folder / f"{model.name}.keras"
        model.save(paths[model.name])
    return paths


def _flat(name: str = "flat"):
    import keras

    from pipeline.models.preprocess import Preprocess

    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = Preprocess("unit")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="first_conv")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x), name=name)


def _nested():
    import keras

    from pipeline.models.preprocess import Preprocess

    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    base_in = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.Conv2D(8, 3, activation="relu", name="block1_conv")(base_in)
    y = keras.layers.MaxPooling2D(2, name="block1_pool")(y)
    y = keras.layers.Conv2D(8, 3, activation="relu", name="block2_conv")(y)
    base = keras.Model(base_in, keras.layers.MaxPooling2D(2)(y), name="base")
    y = keras.layers.Flatten()(base(Preprocess("unit")(inputs)))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(y), name="nested")


def visualize(model_file: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    import keras

    from pipeline.visualize import filters
    from pipeline.visualize.activations import activations
    from pipeline.visualize.anatomy import conv_layer_names
    from pipeline.visualize.gradcam import GradCam, upsample

    model = keras.models.load_model(model_file)
    heats, p_dog = GradCam(model)(images, batch_size=4)
    extractor = filters.layer_model(model, conv_layer_names(model)[0], SIZE)
    pixels = filters.ascend(extractor, **ASCENT)
    shown = activations(model, images[0])
    return {
        "heats": heats,
        "upsampled": upsample(heats, SIZE),
        "p_dog": p_dog,
        "predicted": model.predict(images, verbose=0).ravel(),
        "filters": pixels,
        "filter_means": filters.mean_activations(extractor, pixels),
        **{f"activation/{name}": array for name, array in shown.items()},
    }


def tensorflow_importable() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str]) -> None:
    """Each model's arrays into OUT/<model>.npz, with the backend and whether TensorFlow
    was loaded (before this check tries to import it)."""
    import keras

    out, images_file, *model_files = argv
    images = np.load(images_file)
    for model_file in map(Path, model_files):
        arrays = visualize(model_file, images)
        loaded = "tensorflow" in sys.modules
        np.savez(
            Path(out) / f"{model_file.stem}.npz",
            backend=keras.backend.backend(),
            tensorflow_loaded=loaded,
            tensorflow_importable=tensorflow_importable(),
            **arrays,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
