"""The stages of the from-scratch convnets (dvc.yaml `baseline`, `augmented`): each function
builds its model from its params and hands a Job to the one training routine. Nothing here
imports a conv base: an edit to one does not make these stages stale."""

from __future__ import annotations

from pipeline.core import catalog
from pipeline.core.params import Params
from pipeline.training import train
from pipeline.training.job import load_image_splits, make_job


def baseline(params: Params) -> dict:
    """The book's listing 5.5: the from-scratch convnet."""
    return _scratch(params, catalog.trained_model(params, "baseline"))


def augmented(params: Params) -> dict:
    """Listing 5.13: the same convnet with augmentation and dropout."""
    return _scratch(params, catalog.trained_model(params, "augmented"))


def _scratch(params: Params, model: catalog.TrainedModel) -> dict:
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet

    settings = getattr(params.train, model.kind.name)
    augments = model.kind.augments

    def build_model():  # in the strategy's scope: the augmentation layer has a seed variable
        layer = augmentation(params.augmentation, params.train.seed) if augments else None
        return build_convnet(settings.image_size, settings.dropout, layer, model.name)

    data = load_image_splits(settings.image_size)
    return train.run(make_job(params, model, build_model=build_model, data=data))
