"""Networks: the classifier zoo (MONAI networks plus VGG-16-BN and Inception-V3 in torchvision's layout)
and the generators of the oversampling stage, registered by ``oversample#method`` in :mod:`.registry`."""

from medaug.models.classifiers import CLASSIFIERS, build_classifier, default_learning_rate, load_pretrained
from medaug.models.registry import GENERATORS, GeneratorSpec, generator_sections, generator_spec

__all__ = [
    "CLASSIFIERS",
    "GENERATORS",
    "GeneratorSpec",
    "build_classifier",
    "default_learning_rate",
    "generator_sections",
    "generator_spec",
    "load_pretrained",
]
