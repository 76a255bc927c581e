"""Official checkpoints: registry, verified download, and safe loaders for their file layouts."""
