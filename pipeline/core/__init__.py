"""What every layer uses and that uses nothing of the package: params.yaml's typed view, the
model catalog, the paths of every output, atomic files, the one error type."""
