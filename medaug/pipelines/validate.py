"""A bundle run's settings checked before anything runs: the first item of the bundle's ``initialize``.

``monai.bundle run`` adds any ``--key value`` to the config, so ``--max_epoch 1`` (for ``max_epochs``)
used to train the default epochs silently, and a misspelled method or preset stopped deep in a
traceback only after data loading. :func:`check_bundle_settings` stops such a run with one
:class:`~medaug.settings.SettingsError` naming the key, the value and the fix, in this order (cheap
first): command-line keys the config files do not have, names that are no registered method, preset
or classifier, a ``dataset_dir`` that does not exist, then (once the data is indexed) a
``positive_class`` that is not one of the classes.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from medaug.settings import SettingsError, check_choice, unknown_keys

logger = logging.getLogger("medaug.settings")

__all__ = [
    "check_bundle_settings",
    "check_dataset_dir",
    "check_override_keys",
    "command_line_overrides",
    "named_choices",
    "target_accepts",
]


def _classifiers():
    from medaug.models import CLASSIFIERS

    return sorted(CLASSIFIERS)


def _oversample_methods():
    from medaug.pipelines.oversample.stage import known_methods

    return known_methods()


def _oversample_targets():
    from medaug.pipelines.oversample.stage import TARGETS

    return TARGETS


def _generators():
    from medaug.models import GENERATORS

    return tuple(GENERATORS)


def _pretrain_methods():
    from medaug.pipelines.pretrain.stage import PRETRAIN_METHODS

    return tuple(PRETRAIN_METHODS)


def _rebalance_methods():
    from medaug.pipelines.train.rebalance import REBALANCE_METHODS

    return REBALANCE_METHODS


def _mix_methods():
    from medaug.pipelines.train.mixing import MIX_METHODS

    return MIX_METHODS


def _selection_criteria():
    from medaug.pipelines.train.engine_metrics import SELECTION_CRITERIA

    return SELECTION_CRITERIA


def _tta_modes():
    from medaug.pipelines.tta import TTA_MODES

    return TTA_MODES


def _presets():
    from medaug.transforms.presets import available_presets

    return available_presets()


def _classifier_key(name: str) -> str:
    from medaug.models.classifiers import classifier_key

    return classifier_key(name)


def _is_preset_file(value) -> bool:
    return str(value).endswith((".yaml", ".yml")) or Path(str(value)).is_file()


# config id -> (the names it may take, how names are folded before comparing, values not checked)
NAMED_SETTINGS: dict[str, tuple[Callable, Callable | None, Callable]] = {
    "classifier": (_classifiers, _classifier_key, lambda v: False),
    "rebalance#method": (_rebalance_methods, None, lambda v: False),
    "oversample#method": (_oversample_methods, None, lambda v: False),
    "oversample#target": (_oversample_targets, None, lambda v: False),
    "oversample#hybrid#generator": (_generators, None, lambda v: False),
    "pretrain#method": (_pretrain_methods, None, lambda v: False),
    "augment#preset": (_presets, None, _is_preset_file),
    "evaluate#robustness#suite": (_presets, None, _is_preset_file),
    "augment#mix#method": (_mix_methods, None, lambda v: False),
    "select_on": (_selection_criteria, None, lambda v: False),
    "tta": (_tta_modes, None, lambda v: False),
}


def named_choices(values: Mapping[str, object]) -> None:
    """Check each of ``values`` (config id -> value) that :data:`NAMED_SETTINGS` knows against the
    registered names; a :class:`SettingsError` with "did you mean" for the first that is none."""
    for key, value in values.items():
        if key not in NAMED_SETTINGS or not isinstance(value, str):
            continue
        choices, fold, exempt = NAMED_SETTINGS[key]
        if not exempt(value):
            what = "a preset (or a YAML file):" if key in ("augment#preset", "evaluate#robustness#suite") else "one of"
            check_choice(key, value, choices(), what=what, normalize=fold)


def target_accepts(component: Mapping, name: str) -> bool:
    """Whether the callable a ``_target_`` component names takes keyword ``name`` (or ``**kwargs``);
    True when the target cannot be looked up here (MONAI will say so itself)."""
    from pydoc import locate

    from monai.bundle import ConfigComponent

    try:
        target = ConfigComponent(dict(component)).resolve_module_name()
        signature = inspect.signature(locate(target) if isinstance(target, str) else target)
    except Exception:  # not importable, or no signature to read
        return True
    params = signature.parameters.values()
    return name in signature.parameters or any(p.kind is p.VAR_KEYWORD for p in params)


def _arguments(function) -> set[str]:
    return {
        n for n, p in inspect.signature(function).parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def command_line_overrides() -> tuple[dict, dict] | None:
    """``(overrides, file_config)`` of the ``monai.bundle run`` that is running this code, or None
    outside one.

    ``overrides`` holds the ``--key value`` pairs (also those of an ``--args_file``), keyed by their
    ``#`` id; ``file_config`` is what the config files (and the metadata, as ``_meta_``, and any
    ``--tracking`` settings' keys) hold before the overrides. MONAI keeps neither once the workflow
    is built, so they are read from the arguments of :func:`monai.bundle.scripts.run` in the call
    stack, the way :func:`~medaug.pipelines.tracking.current_bundle_parser` finds the parser.
    """
    from monai.bundle import ConfigParser, ConfigWorkflow, scripts
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    frame = inspect.currentframe()
    while frame is not None and frame.f_code is not scripts.run.__code__:
        frame = frame.f_back
    if frame is None:
        return None
    own = _arguments(scripts.run)
    local = frame.f_locals
    args = scripts.update_kwargs(
        local.get("args_file"), **{n: local.get(n) for n in own if n != "args_file"}, **local.get("override", {})
    )
    # the workflow's own arguments (e.g. --workflow_type) are no config keys either
    taken = own | _arguments(ConfigWorkflow.__init__) | {"workflow_name"}
    overrides = {str(k).replace("::", "#"): v for k, v in args.items() if k not in taken}
    config = dict(ConfigParser.load_config_files(args["config_file"])) if args.get("config_file") else {}
    config["_meta_"] = {}
    tracking = args.get("tracking")
    if tracking:
        settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else None
        settings = settings or ConfigParser.load_config_files(tracking)
        config.update({k: None for k in settings.get("configs", {}) if k not in config})
    return overrides, config


def check_override_keys(overrides: Mapping, config: Mapping) -> None:
    """A :class:`SettingsError` for the first override key the config files do not have (with the
    nearest key), unless it is a keyword the ``_target_`` it is added to accepts."""
    for key, nearest in unknown_keys(overrides, config, accepts_new=target_accepts).items():
        fix = f"did you mean --{nearest}?" if nearest else "see the bundle's configs/*.json for the keys it has"
        raise SettingsError(key, "not a key of this bundle's config", fix, value=overrides[key])


def check_dataset_dir(dataset_dir) -> None:
    if dataset_dir is None or not os.path.exists(os.fspath(dataset_dir)):
        raise SettingsError(
            "dataset_dir",
            "no such file or folder",
            "set --dataset_dir to an .npz archive, a folder of class folders or a DICOM folder with labels.csv",
            value=None if dataset_dir is None else str(dataset_dir),
        )


def check_bundle_settings() -> None:
    """Validate the running bundle's settings; a :class:`SettingsError` for the first bad one.

    Reads the running workflow's parser (none: nothing to check, e.g. a config used as a library).
    Evaluates only plain settings and, last, the ``study_data`` (the data must be indexed to know
    its classes), which the run builds anyway.
    """
    from medaug.pipelines.evaluate.test_split import resolve_positive_class
    from medaug.pipelines.tracking.tracker import current_bundle_parser

    parser = current_bundle_parser()
    if parser is None:
        return
    found = command_line_overrides()
    if found is not None:
        check_override_keys(*found)
    named_choices({key: parser.get_parsed_content(key) for key in NAMED_SETTINGS if key in parser})
    if "evaluate#robustness" in parser:  # corruption names and severities, before hours of training
        from medaug.pipelines.evaluate.robustness import RobustnessEvaluation

        RobustnessEvaluation.from_config(parser.get_parsed_content("evaluate#robustness"))
    if "dataset_dir" in parser:
        check_dataset_dir(parser.get_parsed_content("dataset_dir"))
    if "positive_class" in parser and "study_data" in parser:
        class_names = list(parser.get_parsed_content("study_data").class_names)
        resolve_positive_class(parser.get_parsed_content("positive_class"), class_names)
