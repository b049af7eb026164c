"""medaug: remedies for small, class-imbalanced medical image classification, built on MONAI."""

__version__ = "0.1.0"


def _install_bundle_error_hook() -> None:
    # Under ``python -m monai.bundle run`` (the configs' ``$import medaug``) a wrong setting ends with one
    # short message and exit 2, and an open MLflow run ends FAILED; nothing changes for library use.
    from medaug import bundle_errors

    if bundle_errors.running_monai_bundle():
        bundle_errors.install()


_install_bundle_error_hook()
