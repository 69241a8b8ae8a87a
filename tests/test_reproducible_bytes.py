"""With `train.runtime.deterministic: true`, a rerun with the same inputs writes the same
bytes: every DVC output, and so dvc.lock, stays as it was."""

from __future__ import annotations

import hashlib
import json
import time
import zipfile

import pytest
import yaml

from tests.helpers.project import ran_stages, run


def test_the_same_model_built_and_saved_twice_gives_the_same_bytes(tmp_path):
    """Two builds (as two stage processes make them), a second apart, in mixed precision:
    Keras would write two save dates and two memory addresses of the shared dtype policy."""
    import keras
    import numpy as np

    from pipeline.models.model_io import FIXED_ZIP_DATE, save_keras

    def build():
        keras.utils.set_random_seed(0)
        layers = [
            keras.Input((4,), name="x"),
            keras.layers.Dense(3, name="a"),
            keras.layers.Dense(1, name="b"),
        ]
        return keras.Sequential(layers, name="m")  # named: as a fresh process would name them

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build()
        first = save_keras(model, tmp_path / "a.keras").read_bytes()
        time.sleep(1.1)  # Keras stamps the second into the file
        second = save_keras(build(), tmp_path / "b.keras").read_bytes()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert first == second
    with zipfile.ZipFile(tmp_path / "a.keras") as saved:
        assert {i.date_time for i in saved.infolist()} == {FIXED_ZIP_DATE}
        assert [i.filename for i in saved.infolist()] == sorted(saved.namelist())
        assert json.loads(saved.read("metadata.json"))["date_saved"].startswith("1980-01-01")
        assert '"shared_object_id": 1' in saved.read("config.json").decode()
    reloaded = keras.models.load_model(tmp_path / "a.keras")
    assert reloaded.layers[0].dtype_policy.name == "mixed_bfloat16"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def output_hashes(project) -> dict[str, str]:
    """sha256 of every file of every output dvc.lock records."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    hashes = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = project / out["path"]
            for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if file.is_file():
                    relative = str(file.relative_to(project))
                    hashes[relative] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


@pytest.mark.slow
@pytest.mark.extended
def test_forced_rerun_of_the_training_stages_writes_identical_bytes(project_copy):
    """The shared trained project has `deterministic: true`; a copy of it is rerun."""
    project = project_copy
    lock = (project / "dvc.lock").read_bytes()
    before = output_hashes(project)
    assert {"models/baseline.keras", "models/augmented.keras"} <= set(before)
    assert "reports/figures/augmented/curves.png" in before

    rerun = run(["dvc", "repro", "-f", "baseline", "augmented"], project)
    assert {"download", "split", "prepare@48", "baseline", "augmented"} <= set(
        ran_stages(rerun.stdout)
    )
    after = output_hashes(project)
    changed = sorted(path for path in before if before[path] != after.get(path))
    assert changed == [], changed
    assert (project / "dvc.lock").read_bytes() == lock
    # Timing lives beside the outputs, in a file DVC does not track.
    seconds = json.loads((project / "reports/timing/baseline.json").read_text())
    assert seconds["train_seconds"] > 0
    assert "reports/timing/baseline.json" not in after
    print(f"{len(after)} output files identical after two runs; sha256 of some:")  # pytest -s
    for path, digest in sorted(after.items()):
        if not path.startswith("data/images/"):
            print(f"  {digest[:16]}  {path}")
