"""EfficientNet-Lite0 in Keras with the PyTorch-ported ImageNet weights.

Correctness is shown three ways:
* architecture: exact parameter counts (4,652,008 trainable = the published 4.652M);
* numerics: the loaded Keras model equals, to float32 precision, a float64 NumPy
  re-implementation of the PyTorch port it comes from (ml-illustrated/EfficientNet-Lite-PyTorch,
  explicit ``ZeroPad2d(pad // 2, pad - pad // 2)`` padding, BN eps 1e-3, ReLU6), on even
  and odd input sizes, so padding, kernel layouts and BN mapping are all exercised;
* behaviour: top-1 ImageNet classes of real cat and dog photos.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

# keras and the port (pipeline.models imports keras) are imported in the functions that use
# them, not at collection in every worker


def preprocess_input(x):
    """What Lite0's weights expect of [0, 255] RGB: (x - 127) / 128."""
    from pipeline.models.efficientnet_lite0 import lite0

    return np.asarray(x, np.float32) * lite0.PREPROCESS_SCALE + lite0.PREPROCESS_OFFSET


def pth() -> str:
    """The ImageNet weights' .pth file, where the port finds it (a function, not a fixture: a
    module-scoped one would group its tests on one xdist worker, tests/run_order.py)."""
    from pipeline.models.efficientnet_lite0 import lite0

    return lite0.default_pth_path()


ZIP = Path(
    os.environ.get("DOGS_VS_CATS_ZIP")
    or Path(__file__).resolve().parents[1].parent / "shared/data/dogs-vs-cats-6000.zip"
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
DOG_CLASSES = range(151, 269)  # Chihuahua ... Mexican hairless


@pytest.fixture(scope="module")
def state_dict():
    from pipeline.models.efficientnet_lite0.torch_legacy import load_legacy_state_dict

    return load_legacy_state_dict(pth())


@pytest.fixture(scope="module")
def full_model():
    """The 1000-class model with ImageNet weights, any input size (built once per module)."""
    from pipeline.models.efficientnet_lite0 import lite0

    model = lite0.build_efficientnet_lite0(input_shape=(None, None, 3), include_top=True)
    lite0.load_pth_weights(model, pth())
    return model


def _count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


# -- architecture -----------------------------------------------------------------------------


def test_architecture_parameter_counts_and_shapes():
    import keras

    from pipeline.models.efficientnet_lite0 import lite0

    full = lite0.build_efficientnet_lite0(include_top=True)
    notop = lite0.build_efficientnet_lite0()
    assert full.name == notop.name == "efficientnet_lite0"
    # Keras counts BN moving mean/variance too (non-trainable); the published 4.652M
    # (timm tf_efficientnet_lite0, d-li14/efficientnet-lite.pytorch) is the trainable count.
    assert full.count_params() == 4_694_024
    assert _count(full.trainable_weights) == 4_652_008
    assert notop.count_params() == 3_413_024
    assert _count(notop.trainable_weights) == 3_371_008
    assert full.count_params() - notop.count_params() == 1280 * 1000 + 1000

    dw = [layer for layer in full.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert len(dw) == 16
    assert [layer.kernel_size[0] for layer in dw] == [3] * 3 + [5] * 2 + [3] * 3 + [5] * 7 + [3]
    assert sum(layer.strides[0] == 2 for layer in dw) == 4
    bns = [layer for layer in full.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.epsilon == 1e-3 for layer in bns)
    assert all(
        isinstance(layer, keras.layers.ReLU) and layer.max_value == 6.0
        for layer in full.layers
        if layer.name.endswith("activation")
    )
    assert full.get_layer("predictions").activation is keras.activations.softmax

    assert full.output_shape == (None, 1000)
    assert notop.output_shape == (None, 7, 7, 1280)
    assert lite0.build_efficientnet_lite0((150, 150, 3)).output_shape == (None, 5, 5, 1280)
    pooled = lite0.build_efficientnet_lite0((None, None, 3), pooling="max")
    assert pooled.output_shape == (None, 1280)
    assert pooled(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 1280)  # smallest size
    with pytest.raises(ValueError, match="pooling"):
        lite0.build_efficientnet_lite0(pooling="sum")


# -- numerics against the PyTorch port --------------------------------------------------------


def _reference_forward(sd, image):
    """Float64 NumPy forward pass with the PyTorch port's semantics (NCHW, explicit padding)."""
    from pipeline.models.efficientnet_lite0 import lite0

    def conv(x, w, stride=1, depthwise=False):
        k = w.shape[-1]
        pads = []
        for n in x.shape[1:]:  # Conv2dStaticSamePadding: pad//2 before, the rest after
            pad = max((-(-n // stride) - 1) * stride + k - n, 0)
            pads.append((pad // 2, pad - pad // 2))
        x = np.pad(x, [(0, 0)] + pads)
        oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
        out = 0.0
        for i in range(k):
            for j in range(k):
                patch = x[:, i : i + stride * oh : stride, j : j + stride * ow : stride]
                if depthwise:  # weight (C, 1, k, k)
                    out = out + w[:, 0, i, j][:, None, None] * patch
                else:  # weight (O, I, k, k)
                    out = out + np.einsum("oc,chw->ohw", w[:, :, i, j], patch)
        return out

    def bn(x, prefix):
        g, b, m, v = (
            sd[f"{prefix}.{n}"][:, None, None].astype(np.float64)
            for n in ("weight", "bias", "running_mean", "running_var")
        )
        return (x - m) / np.sqrt(v + 1e-3) * g + b

    def relu6(x):
        return np.clip(x, 0.0, 6.0)

    x = ((np.asarray(image, np.float64) - 127.0) / 128.0).transpose(2, 0, 1)
    x = relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    for i, _, f_in, f_out, _, stride, expand in lite0._blocks():
        p, inputs = f"_blocks.{i}.", x
        if expand != 1:
            x = relu6(bn(conv(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
        x = relu6(bn(conv(x, sd[p + "_depthwise_conv.weight"], stride, True), p + "_bn1"))
        x = bn(conv(x, sd[p + "_project_conv.weight"]), p + "_bn2")
        if stride == 1 and f_in == f_out:
            x = x + inputs
    x = relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
    features = x.mean(axis=(1, 2))
    logits = sd["_fc.weight"] @ features + sd["_fc.bias"]
    probs = np.exp(logits - logits.max())
    return features, probs / probs.sum()


@pytest.mark.parametrize("height,width", [(64, 64), (65, 63), (97, 100)])
def test_matches_numpy_reference_of_pytorch_port(full_model, state_dict, height, width):
    import keras

    rng = np.random.default_rng(height * width)
    # Smooth random image (photos are smooth) plus noise, in [0, 255].
    image = rng.uniform(0, 255, (height // 8 + 1, width // 8 + 1, 3))
    image = np.kron(image, np.ones((8, 8, 1)))[:height, :width] + rng.normal(
        0, 10, (height, width, 3)
    )
    image = np.clip(image, 0, 255).astype(np.float32)

    features_model = keras.Model(
        full_model.input, [full_model.get_layer("avg_pool").output, full_model.output]
    )
    features, probs = features_model(preprocess_input(image[None]), training=False)
    ref_features, ref_probs = _reference_forward(state_dict, image)

    np.testing.assert_allclose(np.asarray(features)[0], ref_features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(probs)[0], ref_probs, atol=1e-5)


def test_folded_batch_norm_gives_the_same_features_and_classes(full_model):
    import keras

    from pipeline.models.efficientnet_lite0 import lite0

    folded = lite0.fold_batch_norm(full_model)
    assert not [
        layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert folded.count_params() < full_model.count_params()  # BN's 4 vectors became 1 bias
    images = np.random.default_rng(1).uniform(-1, 1, (4, 96, 96, 3)).astype(np.float32)
    for name in ("top_activation", "predictions"):
        outputs = [
            keras.Model(m.input, m.get_layer(name).output)(images, training=False)
            for m in (full_model, folded)
        ]
        np.testing.assert_allclose(
            np.asarray(outputs[1]), np.asarray(outputs[0]), rtol=1e-4, atol=1e-4
        )

    for pooling in ("avg", "max"):  # avg: the shape extraction uses
        pooled = lite0.build_efficientnet_lite0((64, 64, 3), pooling=pooling)
        folded = lite0.fold_batch_norm(pooled)
        assert folded.output_shape == pooled.output_shape == (None, 1280)
        assert folded.layers[-1].name == f"{pooling}_pool"


# -- loading is strict ------------------------------------------------------------------------


def test_load_pth_weights_reports_every_mismatch(monkeypatch, state_dict):
    import keras

    from pipeline.models.efficientnet_lite0 import lite0

    notop = lite0.build_efficientnet_lite0((64, 64, 3))
    lite0.load_pth_weights(notop, pth())  # the classifier keys are ignored without a top

    def patched(change):
        sd = dict(state_dict)
        change(sd)
        monkeypatch.setattr(lite0, "load_legacy_state_dict", lambda path: sd)

    patched(lambda sd: sd.update({"_extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"not used.*_extra\.weight"):
        lite0.load_pth_weights(notop, pth())

    patched(lambda sd: sd.pop("_blocks.3._bn1.running_var"))
    with pytest.raises(ValueError, match=r"lacks.*_blocks\.3\._bn1\.running_var.*block3a_bn"):
        lite0.load_pth_weights(notop, pth())

    patched(lambda sd: sd.update({"_conv_head.weight": np.zeros((1280, 320, 3, 3), np.float32)}))
    with pytest.raises(ValueError, match="shape mismatch for 'top_conv'"):
        lite0.load_pth_weights(notop, pth())

    monkeypatch.undo()
    inputs = keras.Input((8, 8, 3))
    stranger = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="my_conv")(inputs))
    with pytest.raises(ValueError, match="'my_conv' has no counterpart"):
        lite0.load_pth_weights(stranger, pth())


def test_preprocess_layer_is_the_tflite_normalisation():
    from pipeline.models.bases import BASES

    x = np.array([[[0.0, 127.0, 255.0]]], np.float32)
    layer = BASES["efficientnet_lite0"].preprocess()
    np.testing.assert_allclose(np.asarray(layer(x)), (x - 127.0) / 128.0, rtol=1e-6)


# -- real photos ------------------------------------------------------------------------------


def _photos(kind: str, n: int) -> np.ndarray:
    from PIL import Image

    with zipfile.ZipFile(ZIP) as z:
        return np.stack(
            [
                np.asarray(
                    Image.open(io.BytesIO(z.read(f"train/{kind}.{i}.jpg")))
                    .convert("RGB")
                    .resize((224, 224), Image.BILINEAR),
                    dtype=np.float32,
                )
                for i in range(n)
            ]
        )


@pytest.mark.extended
@pytest.mark.slow  # 400 real photos through the full network at 224 px: half a minute
def test_imagenet_top1_on_real_cat_and_dog_photos(full_model):
    """cat.0-199 / dog.0-199 at 224x224 -> ImageNet top-1 class family.

    Measured with these weights: cats 76.5% in 281-285 (top-5 91%), dogs 95.0% in 151-268.
    The cat rate is a property of the checkpoint, not of the port (the model equals the
    NumPy reference above): ~12% of these cats get a dog class (black cats -> schipperke,
    fluffy ones -> Angora rabbit / Pomeranian, small or occluded cats -> objects); over
    cat.0-999 it is 74.2%, and neither ImageNet mean/std nor x/127.5-1 normalization,
    bicubic resizing, centre crops or other sizes lift it above 79%. A wiring bug does
    show: e.g. kernels with height/width swapped drop cats to 54%.
    """
    if not ZIP.is_file():
        pytest.skip(
            f"real photos not found at {ZIP} (set DOGS_VS_CATS_ZIP to the "
            "dogs-vs-cats-6000.zip path)"
        )
    rates = {}
    for kind, classes in (("cat", CAT_CLASSES), ("dog", DOG_CLASSES)):
        probs = full_model.predict(preprocess_input(_photos(kind, 200)), batch_size=50, verbose=0)
        top5 = np.argsort(-probs, axis=1)[:, :5]
        rates[kind] = (
            np.isin(top5[:, 0], classes).mean(),
            np.isin(top5, classes).any(axis=1).mean(),
        )
        print(
            f"{kind}s: top-1 in ImageNet {classes.start}-{classes.stop - 1}: "
            f"{100 * rates[kind][0]:.1f}%  (top-5: {100 * rates[kind][1]:.1f}%)"
        )
    assert rates["dog"][0] >= 0.93
    assert rates["cat"][0] >= 0.72
    assert rates["cat"][1] >= 0.87


def test_finetune_keeps_batch_norm_statistics_frozen(tmp_path):
    """After unfreeze_from, training moves the unfrozen convs but not the BN statistics,
    also for a model that went through save/load (where `training=False` is not honoured)."""
    import keras

    from pipeline.models.efficientnet_lite0 import lite0
    from pipeline.models.pretrained import unfreeze_from

    base = lite0.build_efficientnet_lite0((32, 32, 3))
    lite0.load_pth_weights(base, pth())  # real weights: random ones saturate ReLU6, zero gradients
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    )
    keras.Model(inputs, outputs).save(tmp_path / "m.keras")
    model = keras.models.load_model(tmp_path / "m.keras")
    unfreeze_from(model, "efficientnet_lite0", "block6a_expand_conv")
    inner = model.get_layer("efficientnet_lite0")
    bn, conv, frozen = (
        inner.get_layer("top_bn"),
        inner.get_layer("top_conv"),
        inner.get_layer("stem_conv"),
    )
    before = [w.numpy().copy() for w in (bn.moving_mean, conv.kernel, frozen.kernel)]
    model.compile("sgd", "binary_crossentropy")
    rng = np.random.default_rng(0)
    pixels = preprocess_input(rng.uniform(0, 255, (16, 32, 32, 3)))
    model.fit(pixels, rng.integers(0, 2, (16, 1)), epochs=1, verbose=0)
    after = [w.numpy() for w in (bn.moving_mean, conv.kernel, frozen.kernel)]
    assert np.array_equal(before[0], after[0])  # BN statistics untouched
    assert not np.array_equal(before[1], after[1])  # the unfrozen top conv learned
    assert np.array_equal(before[2], after[2])  # the stem stays frozen
