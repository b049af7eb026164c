"""Networks: the classifier factory (generators arrive with the oversampling stage)."""

from medaug.models.classifiers import CLASSIFIERS, build_classifier, load_pretrained

__all__ = ["CLASSIFIERS", "build_classifier", "load_pretrained"]
