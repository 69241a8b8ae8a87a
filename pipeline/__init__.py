"""The dogs-vs-cats pipeline: `python -m pipeline STAGE`, one command per DVC stage."""
