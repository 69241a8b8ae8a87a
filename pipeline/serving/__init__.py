"""A trained model at work: load and classify, the pyfunc MLflow serves, logging a model as
an MLflow Model, and `predict`. Imports models, data, tracking and core."""
