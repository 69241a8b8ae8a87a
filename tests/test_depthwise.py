"""pipeline/models/depthwise.py: float32 backward passes for bfloat16 depthwise convolutions
compute what Keras' own layer computes, and leave nothing of themselves in a saved model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.training.precision import BF16_CPU_FLAGS, this_cpu_flags

# keras, tensorflow and pipeline.models (which imports keras) are imported in the functions
# that use them, not at collection in every worker

BF16_STEPS = 2 * 2.0**-7  # two bfloat16 rounding steps at the gradient's largest magnitude


def twin_layers(stride: int, kernel: int, use_bias: bool):
    """Two bfloat16 DepthwiseConv2D layers with the same weights; the second one rerouted."""
    import keras

    from pipeline.models.depthwise import float32_backward

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layers = [
        keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=use_bias, activation="relu"
        )
        for _ in range(2)
    ]
    for layer in layers:
        layer.build((None, 14, 14, 24))
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=w.shape).astype("float32") for w in layers[0].get_weights()]
    for layer in layers:
        layer.set_weights(weights)
    assert float32_backward(layers[1])
    return layers


def forward_and_gradients(layer, x):
    import tensorflow as tf

    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) ** 2)
    grads = tape.gradient(loss, [inputs, *layer.trainable_weights])
    return outputs.numpy().astype("float32"), [g.numpy().astype("float32") for g in grads]


@pytest.mark.parametrize(("stride", "kernel"), [(1, 5), (2, 5), (1, 3)])
def test_same_outputs_and_gradients_as_keras_own_layer(stride, kernel):
    keras_layer, rerouted = twin_layers(stride, kernel, use_bias=False)
    x = np.random.default_rng(1).normal(size=(4, 14, 14, 24)).astype("float32")
    out_keras, grads_keras = forward_and_gradients(keras_layer, x)
    out_rerouted, grads_rerouted = forward_and_gradients(rerouted, x)
    np.testing.assert_array_equal(out_rerouted, out_keras)
    assert np.abs(grads_keras[1]).max() > 0  # the kernel's gradient is not trivially zero
    # With bfloat16 units TensorFlow's bfloat16 kernels accumulate in float32 too: the same
    # bits. Without them its emulated kernels round partial sums to bfloat16: a few steps off.
    native = bool(set(BF16_CPU_FLAGS) & this_cpu_flags())
    for ours, theirs in zip(grads_rerouted, grads_keras, strict=True):
        if native:
            np.testing.assert_array_equal(ours, theirs)
        else:
            np.testing.assert_allclose(ours, theirs, atol=BF16_STEPS * np.abs(theirs).max())


def test_bias_gradient_is_at_least_as_close_to_float32():
    import keras

    keras_layer, rerouted = twin_layers(1, 3, use_bias=True)
    x = np.random.default_rng(2).normal(size=(4, 14, 14, 24)).astype("float32")
    _, grads_keras = forward_and_gradients(keras_layer, x)
    _, grads_rerouted = forward_and_gradients(rerouted, x)
    keras.mixed_precision.set_global_policy("float32")
    reference = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")
    reference.build((None, 14, 14, 24))
    reference.set_weights(keras_layer.get_weights())
    _, grads_float32 = forward_and_gradients(reference, x)
    error = {
        name: np.abs(grads[2] - grads_float32[2]).max()
        for name, grads in (("keras", grads_keras), ("rerouted", grads_rerouted))
    }
    assert error["rerouted"] <= error["keras"], error


def test_float32_layers_are_left_alone():
    import keras

    from pipeline.models.depthwise import float32_backward

    keras.mixed_precision.set_global_policy("float32")
    layer = keras.layers.DepthwiseConv2D(3, padding="same")
    layer.build((None, 8, 8, 4))
    assert not float32_backward(layer)
    assert "call" not in vars(layer)


def test_a_saved_model_holds_keras_own_layer(tmp_path):
    import keras

    keras_layer, rerouted = twin_layers(1, 3, use_bias=False)
    inputs = keras.Input((14, 14, 24))
    model = keras.Model(inputs, rerouted(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    layer = loaded.layers[-1]
    assert type(layer) is keras.layers.DepthwiseConv2D and "call" not in vars(layer)
    x = np.random.default_rng(3).normal(size=(2, 14, 14, 24)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
