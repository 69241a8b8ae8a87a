"""The model stages and the one training routine: runtime and precision, resume, the run
record. Imports models, data, tracking, serving, reporting's plots and core."""
