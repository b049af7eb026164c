"""medaug: remedies for small, class-imbalanced medical image classification, built on MONAI."""

__version__ = "0.1.0"
