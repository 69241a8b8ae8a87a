"""What MLflow runs to build the pyfunc of a logged model ("models from code"): nothing is
pickled; the MLflow Model holds this file and a copy of the `pipeline` package (code_paths)."""

from mlflow.models import set_model

from pipeline.serving.inference import ImageClassifier

set_model(ImageClassifier())
