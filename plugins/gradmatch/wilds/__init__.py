"""WILDS adapters for Fish: per-dataset presets (models, transforms, hyperparameters) and the runner."""
