"""Transforms MONAI lacks (physics-informed noise and artifacts) and modality presets; the default
augmentation chain of the bundles uses MONAI's own transforms."""
