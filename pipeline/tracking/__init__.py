"""MLflow: the store, the tags that make runs comparable, per-epoch logging, the registry.
Imports core only."""
