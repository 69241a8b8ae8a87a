"""Trains every model of a tiny project under one runtime combination, in one process.

    cd <project> && python tests/runtime_matrix_worker.py results.json

Run by tests/test_runtime_matrix.py, one fresh process per combination: the logical CPUs
(PIPELINE_LOGICAL_CPUS) are fixed when TensorFlow starts, and the mixed-precision policy is
process-wide, so combinations cannot share a process. Within it, each model goes through
the same stage functions `python -m pipeline train ...` calls (real MLflow store, real
outputs), then its saved .keras file is loaded afresh and evaluated on the test split. A
model that fails is recorded with its traceback and the next one still runs.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

BASE = "vgg16"  # random weights: no download, and its small image size keeps it cheap


def test_split(project: Path, base: str, image_size: int | None):
    """Test inputs and labels: prepared pixels, or (None) the base's cached features."""
    import numpy as np

    from pipeline.data.prepare import load_prepared

    if image_size:
        return load_prepared(image_size, "test", root=project / "data/prepared")
    with np.load(project / f"data/features/{base}/test.npz") as arrays:
        return arrays["features"], arrays["labels"]


def reloaded_scores(project: Path, name: str, image_size: int | None) -> dict:
    """Test loss, accuracy and confusion matrix of PROJECT/models/NAME.keras, loaded afresh
    (also by tests/test_runtime_matrix.py, in its own process, for the trained project)."""
    import keras
    import numpy as np

    import pipeline.models  # noqa: F401  registers the custom layers
    from pipeline.data.dataset import make_dataset
    from pipeline.serving.inference import predicted_labels
    from pipeline.training.train import test_scores

    base = name.split("-", 1)[1] if "-" in name else BASE
    inputs, labels = test_split(project, base, image_size)
    model = keras.models.load_model(project / f"models/{name}.keras")
    # one pass, scored as train.evaluate scores the trained model (test_scores is checked
    # against model.evaluate in the fast tier): a second compiled function costs seconds
    scores = model.predict(make_dataset(inputs, labels, 8), verbose=0)
    loss, accuracy = test_scores(model, labels, scores)
    predicted = predicted_labels(scores)
    confusion = np.zeros((2, 2), dtype=int)
    np.add.at(confusion, (labels.ravel().astype(int), predicted), 1)
    return {
        "test_loss": loss,
        "test_accuracy": accuracy,
        "confusion_matrix": confusion.tolist(),
        "jit_compile": bool(model.jit_compile),
    }


def main(out: Path) -> None:
    sys.path.insert(0, str(Path.cwd()))  # the project's copy, as `python -m pipeline` uses
    from pipeline.core.params import load_params
    from pipeline.training import pretrained, runtime, scratch

    params = load_params()
    scratch_size = params.train.baseline.image_size
    base_size = params.pretrained.bases[BASE].image_size
    steps = {
        "baseline": (lambda: scratch.baseline(params), scratch_size),
        "augmented": (lambda: scratch.augmented(params), scratch_size),
        f"features-{BASE}": (lambda: pretrained.features(params, BASE), None),
        f"frozen_aug-{BASE}": (lambda: pretrained.frozen_aug(params, BASE), base_size),
        f"finetune-{BASE}": (lambda: pretrained.finetune(params, BASE), base_size),
    }
    # First, as in every stage process: logical CPUs before TensorFlow starts.
    setup = runtime.setup(params.train.runtime, params.train.seed)
    results = {"jit_compile": setup.jit_compile, "precision": setup.precision}
    pretrained.base_weights(params, BASE)
    pretrained.extract(params, BASE, batch_size=8)
    for name, (train, image_size) in steps.items():
        try:
            metrics = train()
            reloaded = reloaded_scores(Path.cwd(), name, image_size)
            results[name] = {"metrics": metrics, "reloaded": reloaded}
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
