"""Networks: the classifier zoo (MONAI networks plus VGG-16-BN and Inception-V3 in torchvision's layout)."""

from medaug.models.classifiers import CLASSIFIERS, build_classifier, load_pretrained

__all__ = ["CLASSIFIERS", "build_classifier", "load_pretrained"]
