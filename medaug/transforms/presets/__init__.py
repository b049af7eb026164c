"""Modality presets (``*.yaml`` beside this file) and the anatomy rules they must respect; the
logic is in :mod:`medaug.transforms.presets.plan`."""

from medaug.transforms.presets.plan import (
    PRESET_DIR,
    AnatomyRuleError,
    AugmentationPlan,
    PresetError,
    available_presets,
    build_augmentation,
    load_preset,
)

__all__ = [
    "PRESET_DIR",
    "AnatomyRuleError",
    "AugmentationPlan",
    "PresetError",
    "available_presets",
    "build_augmentation",
    "load_preset",
]
