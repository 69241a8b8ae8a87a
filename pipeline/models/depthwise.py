"""Float32 backward passes for bfloat16 depthwise convolutions: a kernel choice, same math.

TensorFlow's CPU kernels for the gradients of a depthwise convolution are several times
slower in bfloat16 than in float32 (docs/performance.md), and fine-tuning Lite0's top
spends much of its step there. A layer given `float32_backward`
computes its forward pass exactly as before and its two gradients in float32 (casting the
inputs, the kernel and the incoming gradient up, and the results back down); nothing else
changes, and nothing of it is saved: the layer's class, config and weights stay Keras'.
"""

from __future__ import annotations

import keras


def float32_backward(layer: keras.layers.DepthwiseConv2D) -> bool:
    """Route `layer`'s gradients through float32 where it computes in bfloat16 on
    TensorFlow (channels last, no dilation: what its own kernels cover). True if it did."""
    if (
        keras.backend.backend() != "tensorflow"  # JAX and torch choose their own kernels
        or layer.compute_dtype != "bfloat16"
        or layer.data_format != "channels_last"
        or tuple(layer.dilation_rate) != (1, 1)
    ):
        return False
    import tensorflow as tf

    strides = (1, *layer.strides, 1)
    padding = layer.padding.upper()

    @tf.custom_gradient
    def depthwise(inputs, kernel):
        outputs = tf.nn.depthwise_conv2d(inputs, kernel, strides, padding)

        def gradients(upstream):
            up, x, k = (tf.cast(t, tf.float32) for t in (upstream, inputs, kernel))
            d_inputs = tf.nn.depthwise_conv2d_backprop_input(
                tf.shape(inputs), k, up, strides, padding
            )
            d_kernel = tf.nn.depthwise_conv2d_backprop_filter(
                x, tf.shape(kernel), up, strides, padding
            )
            return tf.cast(d_inputs, inputs.dtype), tf.cast(d_kernel, kernel.dtype)

        return outputs, gradients

    def call(inputs):
        outputs = depthwise(inputs, tf.cast(layer.kernel, inputs.dtype))
        if layer.use_bias:
            outputs = outputs + tf.cast(layer.bias, outputs.dtype)
        return layer.activation(outputs) if layer.activation is not None else outputs

    layer.call = call  # this instance only; Layer.__call__ looks `call` up on each call
    return True
