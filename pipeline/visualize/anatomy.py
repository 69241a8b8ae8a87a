"""Taking a trained model apart: its layers in call order, its conv base, its last conv map.

Every model of the pipeline is a chain: [augmentation] -> preprocessing -> convs (the model's
own, or one nested conv-base Model) -> flatten/pool -> dense layers -> Dense(1, sigmoid).
A layer *inside* a nested base is not reachable from the outer model's graph, so asking the
outer model for `base.get_layer(...).output` fails: `rebuild` calls the chain again on a
fresh input and swaps the base for a copy of itself that also returns the inner tensors
wanted. The same layers (and weights) are reused; only a layer whose activation is dropped
is copied: the last Dense, so Grad-CAM differentiates the logit (which does not saturate),
and for filter patterns a conv's pre-activation (a ReLU silent on the start image has no
gradient). `head_model` is the part after a tapped layer, from its tensor to the logit: the
other half of a model cut there.
"""

from __future__ import annotations

import keras

from pipeline.models.augment import BookAugmentation

CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
POOL_TYPES = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
# Layers that keep a conv's map as it is, position by position.
ACTIVATION_TYPES = (keras.layers.ReLU, keras.layers.Activation)
MAP_WISE_TYPES = (keras.layers.BatchNormalization, *ACTIVATION_TYPES)


def _has_own_convs(model: keras.Model) -> bool:
    return any(isinstance(layer, CONV_TYPES) for layer in model.layers)


def layer_chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers in call order; nested models are flattened, except a conv base (a nested
    model with conv layers of its own), which stays one element."""
    chain = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer | BookAugmentation):
            continue  # augmentation is the identity at inference
        if isinstance(layer, keras.Model) and not _has_own_convs(layer):
            chain.extend(layer_chain(layer))
        else:
            chain.append(layer)
    return chain


def conv_owner(model: keras.Model) -> keras.Model:
    """The model whose own layers are the convs: the nested conv base, or `model` itself."""
    if _has_own_convs(model):
        return model
    bases = [layer for layer in layer_chain(model) if isinstance(layer, keras.Model)]
    if len(bases) != 1:
        raise ValueError(f"{model.name}: expected one conv base, found {len(bases)}")
    return bases[0]


def head_after_base(model: keras.Model) -> keras.Model:
    """The layers after the nested conv base and its flatten/pool layer, as a model from
    the features that extract@<base> caches to P(dog)."""
    chain = layer_chain(model)
    position = next(i for i, layer in enumerate(chain) if isinstance(layer, keras.Model))
    inputs = keras.Input(chain[position + 1].output.shape[1:], name="features")
    x = inputs
    for layer in chain[position + 2 :]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


def conv_layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in conv_owner(model).layers if isinstance(layer, CONV_TYPES)]


def last_conv_name(model: keras.Model) -> str:
    """The layer whose maps Grad-CAM weighs: the last conv, or the batch norm / activation
    right after it while the map keeps its shape (EfficientNet's top_conv -> top_activation),
    as keras.io's Grad-CAM takes the last conv block's activation."""
    layers = conv_owner(model).layers
    index = max(i for i, layer in enumerate(layers) if isinstance(layer, CONV_TYPES))
    while index + 1 < len(layers) and isinstance(layers[index + 1], MAP_WISE_TYPES):
        index += 1
    return layers[index].name


def _has_activation(layer: keras.layers.Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is not None and activation is not keras.activations.linear


def _without_activation(layer: keras.layers.Layer, x):
    """`layer` applied to x without its activation (same weights): the sigmoid output
    layer gives the logit, a conv with a ReLU its pre-activation."""
    config = {**layer.get_config(), "activation": "linear", "name": f"{layer.name}_linear"}
    twin = type(layer).from_config(config)
    y = twin(x)
    twin.set_weights(layer.get_weights())
    return y


def _tap(layer: keras.layers.Layer, x_in, x_out, pre_activation: bool):
    """What a tap on `layer` records: its output, or with `pre_activation` what goes into
    its nonlinearity (a ReLU layer's input; a conv's output before its own activation)."""
    if not pre_activation:
        return x_out
    if isinstance(layer, ACTIVATION_TYPES):
        return x_in
    return _without_activation(layer, x_in) if _has_activation(layer) else x_out


def rebuild(
    model: keras.Model,
    taps: list[str],
    image_size: int | None = None,
    logit: bool = False,
    pre_activation: bool = False,
) -> keras.Model:
    """pixels -> [the tensors of the layers named in `taps`, (the logit)], the layers
    named either in the outer chain or inside the conv base (see _tap). Without `logit`
    the chain stops at the last tap, so `image_size` may differ from the model's."""
    chain = layer_chain(model)
    size = image_size or model.input_shape[1]
    inputs = keras.Input((size, size, model.input_shape[-1]), name="pixels")
    x, tapped = inputs, {}
    for position, layer in enumerate(chain):
        if not logit and len(tapped) == len(taps):
            break
        if isinstance(layer, keras.Model):
            inner = [name for name in taps if _owns(layer, name)]
            complete = logit or len(inner) < len(taps)
            x = _call_base(layer, x, inner, tapped, complete, pre_activation)
        elif logit and position == len(chain) - 1:
            x = _without_activation(layer, x)
        else:
            x_in, x = x, layer(x)
            if layer.name in taps:
                tapped[layer.name] = _tap(layer, x_in, x, pre_activation)
    missing = [name for name in taps if name not in tapped]
    if missing:
        raise ValueError(f"{model.name} has no layer {', '.join(missing)}")
    return keras.Model(inputs, [tapped[name] for name in taps] + ([x] if logit else []))


def head_model(model: keras.Model, layer_name: str) -> keras.Model:
    """The tensor of the conv-base layer `layer_name` (as `rebuild` taps it) -> the logit:
    what runs after that layer, in the conv base and after it, the last Dense without its
    sigmoid. Grad-CAM differentiates it with respect to its input on JAX."""
    chain, owner = layer_chain(model), conv_owner(model)
    maps = owner.get_layer(layer_name).output
    inputs = keras.Input(maps.shape[1:], dtype=maps.dtype, name="maps")
    if owner is model:
        rest = chain[[layer.name for layer in chain].index(layer_name) + 1 :]
        x = inputs
    else:  # the rest of the nested base first, unless the maps are its output
        rest = chain[next(i for i, layer in enumerate(chain) if layer is owner) + 1 :]
        x = inputs if maps is owner.output else keras.Model(maps, owner.output)(inputs)
    for layer in rest[:-1]:
        x = layer(x)
    return keras.Model(inputs, _without_activation(rest[-1], x), name=f"{model.name}_head")


def _owns(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _call_base(base: keras.Model, x, names: list[str], tapped: dict, complete, pre_activation):
    """Call the conv base on x, recording the inner tensors named in `names`; run it to its
    output only if `complete` (a filter pattern of block1 need not run block5)."""
    if not names:
        return base(x)
    layers = [base.get_layer(name) for name in names]
    wanted = [tensor for layer in layers for tensor in (layer.input, layer.output)]
    inner = keras.Model(base.inputs, wanted + ([base.output] if complete else []))
    outputs = inner(x)
    for i, layer in enumerate(layers):
        tapped[layer.name] = _tap(layer, outputs[2 * i], outputs[2 * i + 1], pre_activation)
    return outputs[-1] if complete else None
