"""Keras models of the pipeline. The custom layers are imported here so that any saved
model of ours loads once anything from pipeline.models is imported."""

from pipeline.models import augment, preprocess  # noqa: F401  (register_keras_serializable)
