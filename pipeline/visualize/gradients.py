"""Gradients of a model's output with respect to its input, on the Keras backend in use.

Keras 3 has no backend-neutral gradient (no K.gradients): on TensorFlow the gradient is
taken with tf.GradientTape inside a tf.function, on JAX with jax.value_and_grad inside
jax.jit over `model.stateless_call`, the weights passed as arguments (closed over, a conv
base's weights would be folded into the compiled program as constants). Each backend is
imported only on its own branch: on JAX the pipeline runs where TensorFlow is not installed.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from pipeline.core.errors import PipelineError


def gradient_step(model: keras.Model, objective: Callable, finish: Callable) -> Callable:
    """A compiled f(x) -> finish(x, aux, grad), where `objective(model(x))` is
    (scalar, aux) and grad = d scalar / d x; `finish` is written in keras.ops and runs in
    the same compiled function. Inference mode: no layer updates its state."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_step(model, objective, finish)
    if backend == "jax":
        return _jax_step(model, objective, finish)
    raise PipelineError(f"gradients on the Keras backend {backend!r}: use tensorflow or jax")


def _tensorflow_step(model, objective, finish):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value, aux = objective(model(x, training=False))
        return finish(x, aux, tape.gradient(value, x))

    return lambda x: step(tf.convert_to_tensor(x))


def _jax_step(model, objective, finish):
    import jax

    def value(x, trainable, non_trainable):
        outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return objective(outputs)

    @jax.jit
    def step(x, trainable, non_trainable):
        (_, aux), grad = jax.value_and_grad(value, has_aux=True)(x, trainable, non_trainable)
        return finish(x, aux, grad)

    def run(x):
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return step(x, trainable, non_trainable)

    return run
