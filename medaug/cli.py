"""The ``medaug`` command: thin wrappers over the library for people who do not write configs.

Studies themselves run through MONAI's bundle runner (``python -m monai.bundle run ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3
BUNDLE_ENV = "MEDAUG_BUNDLE"
# Set to 1 in the Docker image: predict uses $MEDAUG_BUNDLE only (no other --bundle, no --trust-bundle).
BUNDLE_ONLY_ENV = "MEDAUG_BUNDLE_ONLY"
DEFAULT_CHECKPOINTS = ("models/model.ts", "models/model.pt")


class UsageError(Exception):
    """A bad argument or bundle; the message starts with the argument's name. Exit code 2."""


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def data_info(args: argparse.Namespace) -> int:
    from medaug.io import build_study_data
    from medaug.io.leaks import describe_leaks

    data = build_study_data(
        args.dataset_dir,
        data_format=args.data_format,
        labels_csv=args.labels_csv,
        exclude=args.exclude,
        class_names=_class_names_arg(args.class_names),
        seed=args.seed,
        frames=args.frames,
        min_train_per_class=0,
        progress=sys.stderr.isatty(),
        report_dir=args.out,
        leaks=args.leaks,
        conflicting_duplicates=args.conflicting_duplicates,
    )
    if args.json:
        info = data.fingerprint() | {
            "sizes": dict(data.sizes()),
            "modalities": dict(data.modalities()),
            "skipped_files": data.skipped,
            "leaks": data.leaks,
            "conflicting_duplicates": data.conflicts,
        }
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    counts = data.counts()
    fixed = "as fixed by the source" if all(e.get("source") == "npz" for e in data.entries) else f"seed {args.seed}"
    print(f"dataset: {data.dataset_dir}\nformat:  {data.data_format}\nclasses: {', '.join(data.class_names)}")
    print(f"\nimages per class and split ({fixed}):")
    rows = [
        [name, *[counts[s][name] for s in ("train", "val", "test")], sum(counts[s][name] for s in counts)]
        for name in data.class_names
    ]
    rows.append(["total", *[sum(counts[s].values()) for s in ("train", "val", "test")], len(data.entries)])
    print(_table(rows, ["class", "train", "val", "test", "all"]))
    print("\nimage sizes (HxW): " + ", ".join(f"{k} ({v})" for k, v in data.sizes().most_common()))
    print("modalities: " + ", ".join(f"{k} ({v})" for k, v in data.modalities().most_common()))
    print(f"\nskipped files: {len(data.skipped)}")
    for item in data.skipped:
        print(f"  {item['path']}: {item['reason']}")
    print(f"\nimages with identical pixels in more than one split (leaks): {len(data.leaks)}")
    for group in data.leaks[: args.max_list]:
        print(f"  {' / '.join(group['splits'])}: {' | '.join(group['images'])}")
    if len(data.leaks) > args.max_list:
        print(f"  ... and {len(data.leaks) - args.max_list} more (use --json for all)")
    if data.patient_leaks:
        print(f"patients in more than one split: {len(data.patient_leaks)}")
    print(f"\nidentical images with conflicting labels: {len(data.conflicts)}")
    for group in data.conflicts[: args.max_list]:
        print(f"  {' | '.join(group['members'])}")
    print(f"\n{describe_leaks(data.leak_summary)}")
    if args.out:
        print(f"reports written to {args.out}: " + ", ".join(p.name for p in data.report_paths.values()))
    return EXIT_OK


def _class_names_arg(values: list[str] | None) -> list[str] | None:
    """``--class-names a b``, or the bundle override's spelling ``"['a','b']"`` / ``null``."""
    if not values:
        return None
    if len(values) == 1 and values[0].strip().lower() in ("null", "none"):
        return None
    if len(values) == 1 and values[0].strip().startswith("["):
        import ast

        try:
            return [str(v) for v in ast.literal_eval(values[0])]
        except (ValueError, SyntaxError):
            raise UsageError(f"--class-names: cannot read {values[0]!r} as a list of names") from None
    return list(values)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def resolve_checkpoint(bundle: Path, checkpoint: str | None) -> Path:
    """``--checkpoint``, else the bundle's TorchScript export ``models/model.ts``, else ``models/model.pt``."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise UsageError(f"--checkpoint: file {checkpoint!r} not found")
        return path
    for name in DEFAULT_CHECKPOINTS:
        if (bundle / name).is_file():
            return bundle / name
    raise UsageError(
        f"--checkpoint: none given and the bundle has none at {bundle / DEFAULT_CHECKPOINTS[0]} or "
        f"{bundle / DEFAULT_CHECKPOINTS[1]}"
    )


def _inference_parser(bundle: Path, overrides: dict, *, keep_imports: bool = False):
    """The bundle's inference config with ``overrides`` applied; its ``imports`` (which would import the
    network and training code; the parts ``predict`` uses locate their own modules) are dropped unless
    ``keep_imports`` (a trusted bundle, evaluated as MONAI's runner would)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    if not keep_imports:
        parser.config.pop("imports", None)  # type: ignore[union-attr]
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _check_baked_bundle_only(args: argparse.Namespace) -> None:
    """Where the installation fixes its bundle (the Docker image), predict runs that bundle only: a
    ``--bundle`` naming another folder, or ``--trust-bundle``, would let a caller of the image run
    a config it does not ship."""
    baked = os.environ.get(BUNDLE_ENV)
    if not baked:
        raise UsageError(f"--bundle: {BUNDLE_ONLY_ENV}=1 but {BUNDLE_ENV} names no bundle")
    if args.bundle and Path(args.bundle).resolve() != Path(baked).resolve():
        raise UsageError(
            f"--bundle: this installation predicts with its baked bundle only ({baked}); "
            f"build an image with the other bundle instead"
        )
    if args.trust_bundle:
        raise UsageError("--trust-bundle: not accepted here; the baked bundle needs no trust")


def predict(args: argparse.Namespace) -> int:
    """Build the bundle's ``configs/inference.json`` with the flags as overrides of its keys
    (:func:`predict_overrides`), evaluate its ``prediction`` (a ``FolderPrediction``, as
    ``python -m monai.bundle run`` does) and run it into the --output set held from the start."""
    from medaug.io.phi import quiet_header_libraries, uid_salt

    quiet_header_libraries()
    bundle_arg = args.bundle or os.environ.get(BUNDLE_ENV)
    if os.environ.get(BUNDLE_ONLY_ENV) == "1":
        _check_baked_bundle_only(args)
    if not bundle_arg:
        raise UsageError(f"--bundle: required (or set {BUNDLE_ENV})")
    bundle = Path(bundle_arg)
    if not (bundle / "configs" / "inference.json").is_file():
        raise UsageError(f"--bundle: {bundle_arg!r} is not a bundle (no configs/inference.json)")
    if not args.input:
        raise UsageError("--input: required")
    if not args.output:
        raise UsageError("--output: required")
    source, target = Path(args.input), Path(args.output)
    if not source.is_dir():
        raise UsageError(f"--input: folder {args.input!r} does not exist or is not a folder")
    if target.exists() and not target.is_dir():
        raise UsageError(f"--output: {args.output!r} exists and is not a folder")
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise UsageError("--output: is inside --input; the input folder is never written to")
    checkpoint = resolve_checkpoint(bundle, args.checkpoint)
    salt = uid_salt(args.salt) if args.hash_uids else None
    if args.hash_uids and not salt:
        raise UsageError("--hash-uids: needs a salt (--salt or the MEDAUG_UID_SALT environment variable)")
    device = _predict_device(args.device)

    from medaug.io.output_set import OutputFolderError
    from medaug.pipelines import predict as P

    overrides = predict_overrides(args, bundle, checkpoint, device, salt, torchscript=P.is_torchscript(checkpoint))
    if args.config_overrides:
        try:
            config = json.loads((bundle / "configs" / "inference.json").read_text())
        except ValueError as err:
            raise UsageError(f"--bundle: configs/inference.json is not valid JSON ({err})") from err
        overrides.update(config_overrides(args.config_overrides, config))
    parser = _checked_inference_parser(args, bundle, overrides)  # read only, nothing evaluated yet
    try:  # before any work: an unwritable or busy --output is found now, not after the predictions
        outputs = P.prediction_outputs(target).open()
    except OutputFolderError as err:
        raise UsageError(f"--output: {err}") from None
    try:
        return _predict_into(outputs, parser, args, checkpoint)
    finally:
        outputs.close()  # releases the lock; a set not committed is discarded, the previous one kept


def _predict_device(name: str | None) -> str:
    import torch

    try:
        device = torch.device(name or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise UsageError(f"--device: {name!r} is not a torch device") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device: {name!r} asked for, but no CUDA device is available")
    return str(device)


#: ``medaug predict``'s flags and the inference config keys they override when given
PREDICT_FLAG_KEYS = {
    "batch_size": "batch_size",
    "workers": "num_workers",
    "parallel": "parallel",
    "frames": "frames",
    "modalities": "modalities",
}


def predict_overrides(
    args: argparse.Namespace, bundle: Path, checkpoint: Path, device: str, salt: str | None, *, torchscript: bool
) -> dict:
    """The inference config's keys that ``medaug predict`` sets: the folders, checkpoint and device always
    (``device`` is an expression in the config), the flags of :data:`PREDICT_FLAG_KEYS` and the salt of
    --hash-uids when given, ``network`` to null for a TorchScript checkpoint (``torch.jit.load`` needs no
    network code), and ``prediction#progress``."""
    overrides = {
        "bundle_root": str(bundle),
        "ckpt_path": str(checkpoint),
        "input_dir": str(args.input),
        "output_dir": str(args.output),
        "device": device,
        **{key: getattr(args, flag) for flag, key in PREDICT_FLAG_KEYS.items() if getattr(args, flag) is not None},
        "prediction#progress": not args.no_progress,
    }
    if salt:
        overrides["uid_salt"] = salt
    if torchscript:
        overrides["network"] = None
    return overrides


#: inference config keys set by predict's own flags: an override of one is refused, naming the flag
FLAG_OWNED_KEYS = {
    "bundle_root": "--bundle",
    "ckpt_path": "--checkpoint",
    "input_dir": "--input",
    "output_dir": "--output",
    "device": "--device",
    "uid_salt": "--hash-uids",
}


def _override_value(text: str):
    """A value as ``monai.bundle run`` reads it from the command line: JSON or a Python literal
    (``"[32,32]"``, ``3``, ``null``, ``None``), else the text itself (``small_cnn``)."""
    import ast

    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_overrides(
    extra: list[str], config: dict, owned: dict = FLAG_OWNED_KEYS, config_name: str = "configs/inference.json"
) -> dict:
    """``--key value`` / ``--key=value`` pairs of the command line that are no flag of the command, as
    overrides of the config's keys (``#`` for nested keys, e.g. ``--prediction#batch_size 8``), as
    ``monai.bundle run`` takes them; a key the config does not have, or one a flag sets (``owned``: key ->
    flag), is a usage error naming it."""
    from medaug.settings import did_you_mean

    overrides, items = {}, list(extra)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or len(flag) < 3:
            raise UsageError(f"{flag}: unexpected argument (overrides of the inference config are --key value)")
        key, has_value, text = flag[2:].partition("=")
        if not has_value:
            if not items or items[0].startswith("--"):
                raise UsageError(f'{flag}: needs a value (e.g. --image_size "[32,32]")')
            text = items.pop(0)
        top = key.split("#")[0]
        if owner := owned.get(key) or owned.get(top):
            raise UsageError(f"{flag}: set by {owner}; use that flag")
        if top not in config:
            near = did_you_mean(top, [k for k in config if isinstance(k, str)])
            hint = f"; did you mean --{near}?" if near else ""
            raise UsageError(f"{flag}: not a key of the bundle's {config_name}{hint}")
        overrides[key] = _override_value(text)
    return overrides


def _checked_inference_parser(args: argparse.Namespace, bundle: Path, overrides: dict):
    """The bundle's inference config with ``overrides``, refused (exit 2, naming --trust-bundle) when its
    ``prediction`` could run code when evaluated; nothing of it is evaluated here."""
    from medaug.bundle_trust import untrusted_parts

    try:
        parser = _inference_parser(bundle, overrides, keep_imports=args.trust_bundle)
        untrusted = [] if args.trust_bundle else untrusted_parts(parser, ["prediction"])
    except Exception as err:
        raise UsageError(f"--bundle: configs/inference.json cannot be used ({type(err).__name__}: {err})") from err
    if untrusted:
        raise UsageError(
            f"--bundle: configs/inference.json of {str(bundle)!r} could run code when read: "
            f"{'; '.join(untrusted)}. Pass --trust-bundle only if you wrote the bundle or trust "
            f"where it came from"
        )
    if args.trust_bundle:
        print(
            "medaug: --trust-bundle: the bundle's expressions and _target_ components are evaluated as they "
            "are; they can run any code",
            file=sys.stderr,
        )
    return parser


def _predict_into(outputs, parser, args: argparse.Namespace, checkpoint: Path) -> int:
    """``predict`` once its arguments and bundle are checked and ``outputs`` (the --output set) is held:
    the config's ``prediction`` evaluated (the model loaded) and run into ``outputs``."""
    from medaug.io.model_record import ModelRecordError
    from medaug.pipelines import predict as P

    try:
        prediction = parser.get_parsed_content("prediction")
    except Exception as err:
        if mismatch := P.error_in_chain(err, P.CheckpointMismatchError):
            raise UsageError(f"--checkpoint: {mismatch}") from err
        if bad_record := P.error_in_chain(err, ModelRecordError):
            raise UsageError(f"--checkpoint: {bad_record}") from err
        root = err
        while root.__cause__ is not None:  # the component's own error, not MONAI's "Failed to instantiate"
            root = root.__cause__
        raise UsageError(f"--bundle: configs/inference.json cannot be used ({type(root).__name__}: {root})") from err
    if not isinstance(prediction, P.FolderPrediction):
        raise UsageError(
            f"--bundle: configs/inference.json's prediction is a {type(prediction).__name__}, not a FolderPrediction"
        )
    for key, wanted in (("input_dir", args.input), ("output_dir", args.output)):
        if Path(getattr(prediction, key)).resolve() != Path(wanted).resolve():  # else the flag would be ignored
            raise UsageError(f"--bundle: configs/inference.json's prediction does not take @{key}")
    info = prediction.model_info or {}
    print(
        f"model: {info.get('model_name', '')} {info.get('model_version', '')} ({checkpoint.name}, sha256 "
        f"{info.get('checkpoint_sha256', '')[:12]}); classes: {', '.join(prediction.class_names)}",
        file=sys.stderr,
    )
    if isinstance(parser.get("settings"), dict):  # evaluated with the prediction; a bundle of its own may have none
        settings = parser.get_parsed_content("settings")
        print(
            f"network: {settings['classifier']}, {'x'.join(map(str, settings['image_size']))} px, "
            f"{settings['channels']} channel(s); modalities: {', '.join(settings['modalities'] or ['any'])} "
            f"(from {settings['source']})",
            file=sys.stderr,
        )
    try:
        summary = prediction.run(outputs)  # prints its summary line
    except P.CheckpointMismatchError as err:  # e.g. a TorchScript model with another number of classes
        raise UsageError(f"--checkpoint: {err}") from err
    except P.PostprocessingError as err:
        raise UsageError(f"--bundle: configs/inference.json: {err}") from err
    print(f"run {summary.run_id}, finished {summary.finished_at} (named in summary.json)")
    if summary.skipped:
        print(f"{summary.skipped} file(s) not used: see {outputs.folder / 'skipped.csv'} for the reasons")
    return summary.exit_code


def export(args: argparse.Namespace) -> int:
    """``medaug export <run dir>``: the run's model into ``<bundle>/models/`` (see :mod:`medaug.pipelines.export`)."""
    from medaug.pipelines.export import ExportError, export_run

    run = Path(args.run)
    if not run.exists():
        raise UsageError(
            f"run: {args.run!r} does not exist (a run folder such as <bundle>/runs/<run>, or its model.pt)"
        )
    bundle_arg = args.bundle or _bundle_of_run(run) or os.environ.get(BUNDLE_ENV)
    if not bundle_arg:
        raise UsageError(f"--bundle: {args.run!r} is not inside a bundle's runs/ folder; name the bundle with --bundle")
    bundle = Path(bundle_arg)
    if not (bundle / "configs" / "inference.json").is_file():
        raise UsageError(f"--bundle: {bundle_arg!r} is not a bundle (no configs/inference.json)")
    try:
        result = export_run(run, bundle, force=args.force)
    except ExportError as err:
        raise UsageError(f"{err.argument}: {err}") from err
    state = "already there, files rewritten" if result.unchanged else "exported"
    print(
        f"{state}: {result.checkpoint}, {result.record}, {result.torchscript} (TorchScript by {result.converted_by}; "
        f"sha256 {result.checkpoint_sha256[:12]})\npredict: medaug predict --bundle {bundle} --input DIR --output DIR"
    )
    return EXIT_OK


def _bundle_of_run(run: Path) -> str | None:
    """The bundle a run folder was trained in: ``<bundle>/runs/<run>`` (or ``<run>/model.pt``)."""
    folder = run.parent if run.is_file() else run
    candidate = folder.resolve().parent.parent
    return str(candidate) if (candidate / "configs" / "inference.json").is_file() else None


#: ``medaug evaluate``'s flags and the bundle keys they set (an override of one is refused, naming the flag)
EVALUATE_FLAG_KEYS = {
    "bundle_root": "--bundle",
    "ckpt_path": "--checkpoint",
    "dataset_dir": "--dataset-dir",
    "output_dir": "--output-dir",
    "evaluate#robustness#enabled": "--robustness/--no-robustness",
    "evaluate#robustness#suite": "--suite",
    "evaluate#robustness#corruptions": "--corruptions",
    "evaluate#robustness#severities": "--severities",
}
#: bundle keys a checkpoint's model record sets (model.json key -> bundle key); the network keys must agree
RECORD_KEYS = {"classifier": "classifier", "image_size": "image_size", "channels": "channels"}
RECORD_KEYS |= {"class_names": "class_names", "positive_class": "positive_class"}


def record_overrides(record: dict | None, given: dict, source: str) -> dict:
    """The bundle keys the checkpoint's model record says (:data:`RECORD_KEYS`, and the frames of its
    preprocessing), for those the user did not give; a given network key that contradicts the record is a
    usage error (the weights would not load into that network)."""
    if not record:
        return {}
    said = {key: record[name] for name, key in RECORD_KEYS.items() if name in record}
    frames = (record.get("preprocessing") or {}).get("frames")
    if frames:
        said["frames"] = frames
    for key in ("classifier", "image_size", "channels", "class_names"):
        if key in given and key in said and list(_as_list(given[key])) != list(_as_list(said[key])):
            raise UsageError(
                f"--{key}: {given[key]!r} contradicts the checkpoint's record ({source}: {said[key]!r}); drop it"
            )
    return {key: value for key, value in said.items() if key not in given}


def _as_list(value):
    return value if isinstance(value, (list, tuple)) else [value]


def _evaluate_config_files(args: argparse.Namespace, bundle: Path) -> list[Path]:
    """configs/train.json, the --config overlays, then configs/evaluate.json (which overlays train.json:
    its own run name, ckpt_path, initialize and run, no training and no pretraining)."""
    if not (bundle / "configs" / "train.json").is_file() or not (bundle / "configs" / "evaluate.json").is_file():
        raise UsageError(f"--bundle: {str(bundle)!r} is not a bundle with configs/train.json and configs/evaluate.json")
    overlays = [_resolve_overlay(bundle, name) for name in args.config]
    return [bundle / "configs" / "train.json", *overlays, bundle / "configs" / "evaluate.json"]


def evaluate_overrides(args: argparse.Namespace, bundle: Path, checkpoint: Path) -> dict:
    """The bundle keys ``medaug evaluate``'s flags set (:data:`EVALUATE_FLAG_KEYS`), given ones only,
    besides bundle_root and ckpt_path."""
    keys = {"bundle_root": str(bundle), "ckpt_path": str(checkpoint.resolve())}
    section = "evaluate#robustness#"
    for flag, key in (
        ("dataset_dir", "dataset_dir"),
        ("output_dir", "output_dir"),
        ("robustness", section + "enabled"),
        ("suite", section + "suite"),
        ("corruptions", section + "corruptions"),
        ("severities", section + "severities"),
    ):
        if getattr(args, flag) is not None:
            keys[key] = getattr(args, flag)
    return keys


def _check_evaluate_flags(args: argparse.Namespace) -> None:
    """--dataset-dir, --suite and --corruptions checked before the bundle is built."""
    from medaug.transforms.corruptions import CorruptionError, suite_for
    from medaug.transforms.presets import PresetError

    if args.dataset_dir is not None and not Path(args.dataset_dir).exists():
        raise UsageError(f"--dataset-dir: {args.dataset_dir!r} does not exist")
    try:
        if args.suite is not None:
            suite_for(args.suite)
        if args.corruptions is not None:
            suite_for("generic", args.corruptions)
    except PresetError as err:
        raise UsageError(f"--suite: {err}") from err
    except CorruptionError as err:
        raise UsageError(f"--corruptions: {err}") from err


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:  # the component's own error, not MONAI's "Failed to instantiate"
        err = err.__cause__
    return err


def evaluate(args: argparse.Namespace) -> int:
    """``medaug evaluate``: MONAI's bundle workflow of configs/train.json + configs/evaluate.json (as
    ``python -m monai.bundle run`` builds it, in this process, so the outputs' folder can be named at the
    end) on --checkpoint: the clean test metrics and, as the bundle's evaluate#robustness says or the flags
    ask, the corruption suite."""
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import create_workflow

    from medaug.io.model_record import ModelRecordError, find_model_record
    from medaug.pipelines import predict as P
    from medaug.pipelines.validate import check_override_keys
    from medaug.settings import SettingsError

    bundle_arg = args.bundle or os.environ.get(BUNDLE_ENV)
    if not bundle_arg:
        raise UsageError(f"--bundle: required (or set {BUNDLE_ENV})")
    bundle = Path(bundle_arg)
    config_files = _evaluate_config_files(args, bundle)
    checkpoint = Path(args.checkpoint) if args.checkpoint else bundle / "models" / "model.pt"
    if not checkpoint.is_file():
        raise UsageError(
            f"--checkpoint: file {str(checkpoint)!r} not found"
            + ("" if args.checkpoint else " (none given: the bundle's models/model.pt, filled by medaug export)")
        )
    if P.is_torchscript(checkpoint):
        raise UsageError("--checkpoint: a TorchScript export holds no training checkpoint; give the run's model.pt")
    _check_evaluate_flags(args)
    config = dict(ConfigParser.load_config_files([str(f) for f in config_files]))
    given = config_overrides(args.config_overrides, config, EVALUATE_FLAG_KEYS, "configs/train.json")
    try:
        record, source = find_model_record(checkpoint)
    except ModelRecordError as err:
        raise UsageError(f"--checkpoint: {err}") from err
    from_record = {k: v for k, v in record_overrides(record, given, source).items() if k in config}
    overrides = {**from_record, **given, **evaluate_overrides(args, bundle, checkpoint)}
    try:
        check_override_keys(given, config)
    except SettingsError as err:
        raise UsageError(f"--{err}") from err
    if from_record:
        print(f"from the checkpoint's record ({source}): {', '.join(sorted(from_record))}", file=sys.stderr)
    try:  # what monai.bundle.scripts.run does, keeping the workflow to name its outputs
        workflow = create_workflow(config_file=[str(f) for f in config_files], **overrides)
    except Exception as err:
        root = _root_cause(err)
        if isinstance(root, (SettingsError, FileNotFoundError)):
            raise UsageError(str(root)) from err
        raise
    try:
        workflow.run()
    except RuntimeError as err:  # CheckpointLoader: weights of another network than the bundle builds
        if "loading state_dict" not in str(_root_cause(err)):
            raise
        raise UsageError(
            f"--checkpoint: does not load into the bundle's network ({str(_root_cause(err)).splitlines()[0]}); "
            "without a model.json beside it, give the --classifier, --image_size, --channels and --class_names "
            "it was trained with"
        ) from err
    workflow.finalize()
    evaluation = workflow.parser.get_parsed_content("test#evaluation")
    out = Path(evaluation.output_dir)
    print(f"metrics: {out / 'metrics.json'}")
    if "robustness" in evaluation.results:
        print(f"robustness: {out / 'robustness.csv'} (curves: {out / 'robustness_curves.png'})")
    else:
        print("robustness: not scored (evaluate#robustness#enabled is false; --robustness scores it)")
    return EXIT_OK


def _image_arg(args: argparse.Namespace) -> tuple[str, Path]:
    """``(datalist reference, file)`` of --image (an .npz archive taken at --split/--index), checked;
    --out checked too, before anything is read."""
    from medaug.io.npz import parse_npz_ref

    image = args.image
    if not image:
        raise UsageError("--image: required")
    if image.endswith(".npz") and parse_npz_ref(image) is None:
        image = f"{Path(image).resolve()}#{args.split}/{args.index}"
    path = image if parse_npz_ref(image) is None else parse_npz_ref(image)[0]
    if not Path(path).is_file():
        raise UsageError(f"--image: file {args.image!r} not found")
    if not args.out:
        raise UsageError("--out: required (the grid image to write, e.g. grid.png)")
    return image, Path(path)


def _read_image_arg(image: str, args: argparse.Namespace):
    """--image's pixels as a (C, H, W) tensor in [0, 1] and its reader's meta, resized to --size as a
    bundle's preprocessing would (area), else as read."""
    import torch
    from monai.transforms import Resize

    from medaug.io import read_entry_image

    try:
        pixels, meta = read_entry_image(image, channels=args.channels)
    except Exception as err:
        raise UsageError(f"--image: cannot be read ({type(err).__name__}: {err})") from err
    tensor = torch.from_numpy(pixels)
    if args.size:
        tensor = Resize(spatial_size=args.size, mode="area")(tensor)
    return tensor, meta


def show_augmentations(args: argparse.Namespace) -> int:
    from medaug.pipelines.train import plot_augmentation_grid
    from medaug.transforms.presets import AugmentationPlan, PresetError

    image, path = _image_arg(args)
    try:
        overrides = json.loads(args.overrides) if args.overrides else None
    except json.JSONDecodeError as err:
        raise UsageError(f"--overrides: not valid JSON ({err})") from err
    tensor, _ = _read_image_arg(image, args)
    try:
        plan = AugmentationPlan(
            args.preset,
            overrides=overrides,
            allow=args.allow,
            image_size=list(tensor.shape[1:]),
            overrides_key="--overrides",
            allow_key="--allow",
        )
    except PresetError as err:
        raise UsageError(str(err) if str(err).startswith("--") else f"--preset: {err}") from err
    out = plot_augmentation_grid(plan, [tensor], args.out, samples=args.samples, seed=args.seed, titles=[path.name])
    print(f"{out}: {len(plan.steps())} transforms of preset {plan.name!r} ({plan.source}), {args.samples} samples each")
    return EXIT_OK


def show_corruptions(args: argparse.Namespace) -> int:
    """``medaug show-corruptions``: the robustness suite of a preset on one image, one row per corruption,
    one column per severity (0 = clean), as the evaluation corrupts that image (seeded by its reference)."""
    from monai.data import MetaTensor

    from medaug.pipelines.train import plot_corruption_grid
    from medaug.transforms.corruptions import CorruptionError, suite_for
    from medaug.transforms.presets import PresetError

    image, path = _image_arg(args)
    try:
        suite = suite_for(args.preset, args.corruptions)
    except PresetError as err:
        raise UsageError(f"--preset: {err}") from err
    except CorruptionError as err:
        raise UsageError(f"--corruptions: {err}") from err
    tensor, meta = _read_image_arg(image, args)
    frame = {"frame": meta["frame"]} if isinstance(meta.get("frame"), int) else {}
    tensor = MetaTensor(tensor, meta={"filename_or_obj": image, **frame})  # what seeds a test image's corruption
    out = plot_corruption_grid(suite, tensor, args.out, seed=args.seed, title=f"preset {args.preset!r}")
    print(
        f"{out}: {len(suite)} corruptions of preset {args.preset!r} x severities 0 (clean) to 5 "
        f"({', '.join(c.name for c in suite)})"
    )
    return EXIT_OK


def pretrain(args: argparse.Namespace) -> int:
    """``medaug pretrain FOLDER ...``: SimCLR on folders of unlabeled images, a checkpoint for ``pretrained_path``."""
    import shutil
    import tempfile

    from medaug.io.atomic import atomic_path, write_csv_atomic
    from medaug.models.classifiers import CLASSIFIERS, MIN_INPUT_SIZE, classifier_key
    from medaug.pipelines.pretrain import PretrainStage
    from medaug.settings import SettingsError, check_choice
    from medaug.transforms.presets import PresetError

    if not args.out:
        raise UsageError("--out: required (the checkpoint to write, e.g. pretrained.pt)")
    for folder in args.folders:
        if not Path(folder).is_dir():
            raise UsageError(f"folder: {folder!r} is not a folder of images")
    try:
        name = check_choice("--classifier", args.classifier, sorted(CLASSIFIERS), normalize=classifier_key)
    except SettingsError as err:
        raise UsageError(str(err)) from None
    smallest = MIN_INPUT_SIZE.get(next(k for k in CLASSIFIERS if classifier_key(k) == classifier_key(name)), 1)
    if min(args.image_size) < smallest:
        raise UsageError(f"--image-size: {name} needs images of at least {smallest} px per side")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="medaug-pretrain-") as scratch:
        try:
            stage = PretrainStage(
                None,
                method="simclr",
                network=name,
                image_size=args.image_size,
                channels=args.channels,
                num_classes=args.num_classes,
                preset=args.preset,
                allow=args.allow,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                temperature=args.temperature,
                seed=args.seed,
                pool={
                    "study_train": False,
                    "shipped": args.shipped,
                    "folders": args.folders,
                    "max_images": args.max_images,
                },
                cache_dir=args.cache_dir or scratch,
                device=args.device or ("cuda:0" if _cuda_available() else "cpu"),
                progress=not args.no_progress,
            )
            pool = stage.pool()
        except PresetError as err:
            raise UsageError(f"--preset: {err}") from err
        except SettingsError as err:
            raise UsageError(str(err)) from err
        skipped_csv = out.with_name(f"{out.stem}_skipped.csv")
        if len(pool) < 2:
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in pool.skipped[:3])
            raise UsageError(
                f"folder: {len(pool)} usable image(s) in {', '.join(args.folders) or 'no folder'} "
                f"({len(pool.skipped)} file(s) skipped{': ' + reasons if reasons else ''}); SimCLR needs at least 2"
                + ("" if args.shipped else " (add --shipped to pretrain on the shipped datasets too)")
            )
        checkpoint = Path(stage.checkpoint())
        with atomic_path(out) as tmp:
            shutil.copyfile(checkpoint, tmp)
        with atomic_path(out.with_suffix(".json")) as tmp:
            shutil.copyfile(checkpoint.parent / "pretrain.json", tmp)
        write_csv_atomic(skipped_csv, pool.skipped, ["path", "reason"])
    probe = "" if not stage.info.get("probe") else f", k-NN probe {stage.info['probe'][-1]}"
    print(
        f"{out}: {name} pretrained with SimCLR ({args.steps} steps, batch {args.batch_size}) on {len(pool)} images "
        f"in {stage.info['seconds']:.0f} s{probe}; {len(pool.skipped)} file(s) skipped ({skipped_csv}); "
        f"details in {out.with_suffix('.json')}\nuse it: --pretrained_path {out} (image_size {args.image_size}, "
        f"channels {args.channels}, classifier {name})"
    )
    return EXIT_OK


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve_overlay(bundle: Path, name: str) -> Path:
    """``--config`` as given, else relative to the bundle or its ``configs`` folder."""
    for candidate in (Path(name), bundle / name, bundle / "configs" / name):
        if candidate.is_file():
            return candidate
    raise UsageError(f"--config: {name!r} is neither a file nor one of {bundle / 'configs'}")


def study_run(args: argparse.Namespace) -> int:
    from medaug.pipelines.study import GridError, StudyInterrupted, StudyLocked, StudyLockLost, StudyRunner, load_grid

    bundle = Path(args.bundle)
    if not (bundle / "configs" / "train.json").is_file():
        raise UsageError(f"bundle: {args.bundle!r} is not a bundle (no configs/train.json)")
    grid_path = Path(args.grid) if args.grid else bundle / "configs" / "grid.yaml"
    if not grid_path.is_file():
        raise UsageError(
            f"--grid: {str(grid_path)!r} not found"
            + ("" if args.grid else " (the bundle ships no configs/grid.yaml; pass --grid)")
        )
    overlays = [_resolve_overlay(bundle, name) for name in args.config]
    try:
        grid = load_grid(grid_path, seeds=args.seeds)
        runner = StudyRunner(
            bundle,
            grid,
            overlays=overlays,
            output_dir=args.output_dir,
            launcher=args.launcher,
            cache_dir=args.cache_dir,
            max_children=args.max_children,
            progress=not args.no_progress,
            stream=args.stream,
            take_over=args.take_over,
        )
    except (GridError, KeyError) as err:
        raise UsageError(str(err)) from err
    total = len(runner.children)
    print(
        f"study {runner.experiment}: {total} child runs ({len(grid.seeds)} seeds) from {grid_path}; "
        f"MLflow {runner.tracking_uri}; logs in {runner.study_dir / 'logs'}",
        file=sys.stderr,
    )
    try:
        summary = runner.run()
    except StudyLockLost as err:
        print(f"medaug: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except (GridError, StudyLocked) as err:
        raise UsageError(str(err)) from err
    except (KeyboardInterrupt, StudyInterrupted):
        print(
            "medaug: study interrupted; the running child was stopped and marked KILLED. Run the same command "
            "again to resume.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(
        f"study {summary.experiment}: parent run {summary.parent_run_id}; {summary.skipped} skipped (already "
        f"finished), {summary.finished} finished now, {len(summary.failed)} failed, {summary.remaining} not "
        f"started"
    )
    for name in summary.failed:
        print(f"  failed: {name} (log: {runner.study_dir / 'logs' / (name + '.log')})")
    if summary.remaining:
        print("stopped early as asked (--max-children); run the same command again to continue")
    report = ["medaug", "report", "--experiment", summary.experiment, "--parent-run", summary.parent_run_id]
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        report += ["--runs-dir", str(runner.output_dir)]
    print("report: " + " ".join(report))
    return EXIT_OK if not summary.failed else EXIT_FAILURE


def report(args: argparse.Namespace) -> int:
    from medaug.pipelines.study import ReportError, write_study_report

    try:
        result = write_study_report(
            experiment=args.experiment,
            baseline=args.baseline,
            parent_run_id=args.parent_run,
            out_dir=args.out,
            tracking_uri=args.tracking_uri,
            runs_dir=args.runs_dir,
            n_bootstrap=args.n_bootstrap,
            log_to_mlflow=not args.no_log,
            **{k: v for k, v in (("min_seeds", args.min_seeds), ("min_epochs", args.min_epochs)) if v is not None},
        )
    except ReportError as err:
        raise UsageError(str(err)) from err
    print(
        f"report on {result['runs']} runs ({result['cells']} strategies/cells, {result['comparisons']} paired "
        f"comparisons against {result['baseline']!r}):\n  {result['html']}\n  {result['markdown']}"
    )
    if result.get("not_an_answer"):
        print(
            f"{result['not_an_answer']} of {result['comparisons']} comparisons are not an answer "
            "(smoke/short runs, too few seeds or collapsed models): see the report's sanity marks"
        )
    if result.get("logged_to"):
        print(f"logged to MLflow run {result['logged_to']}")
    return EXIT_OK


STUDY_EPILOG = """\
grid (configs/grid.yaml of the bundle, or --grid):
  axes:          {config key: [values]}; every combination is run ('#' for sections: rebalance#method)
  strategies:    optional {name: {config key: value}}; a strategy's keys are fixed for it
  strategy_key:  the axis that is "the strategy" in the report (named strategies: their name)
  baseline:      the strategy the report tests the others against
  seeds:         a count (0..N-1) or a list; --seeds N overrides; seed_key (default: seed)
  amount_key:    optional axis drawn as amount-sweep curves in the report

resuming: every child run is tagged with a hash of the bundle configs and its overrides; children already
FINISHED under the study's parent run are skipped, children a killed study left RUNNING are marked KILLED
and run again. Run the same command again after an interruption.

one runner per study: a lock file in --output-dir, and a lock on the tracking store (a 'medaug.study_lock'
tag on the study's parent run: owner host, pid, since, and a heartbeat rewritten every 30 s), so a second
runner on a shared MLFLOW_TRACKING_URI (another folder or machine) refuses (exit 2) naming the owner instead
of killing its child runs. A runner killed outright leaves its lock behind: it is taken over once its
heartbeat is older than 180 s, or at once from the same machine when that process is gone. --take-over
takes it now (only for a runner known to be gone: the old one, if alive, stops before its next child).

launcher: the command that runs one child, followed by --config_file/--bundle_root/--output_dir. Default:
  "{python} -m monai.bundle run"; for DDP: --launcher "torchrun --nproc_per_node=2 -m monai.bundle run"
  (with the bundle's multi-GPU overlay in --config).
"""


PREDICT_EPILOG = """\
the bundle's configs/inference.json is what runs: predict builds it with MONAI's ConfigParser, the flags given
overriding its keys (--bundle bundle_root, --checkpoint ckpt_path, --input input_dir, --output output_dir,
--device device, --batch-size batch_size, --workers num_workers, --parallel parallel, --frames frames,
--modalities modalities, --hash-uids uid_salt; a flag not given leaves the bundle's value; any other
'--key value' overrides that key of the config, as with monai.bundle run, e.g. --classifier small_cnn
--image_size "[32,32]" --channels 3 --class_names "['a','b','c']"), and runs its
'prediction' (medaug.pipelines.predict.FolderPrediction), as 'python -m monai.bundle run --config_file
<bundle>/configs/inference.json --bundle_root <bundle> --input_dir ... --output_dir ...' does: the bundle's
preprocessing on every image (decoded in worker processes with "parallel": "process"), its inferer on each batch,
and its postprocessing (MONAI post transforms, e.g. Activationsd softmax) on each image's network output, in
this process: the prob_<class> columns are what the postprocessing gives, predicted is their argmax.

checkpoint: --checkpoint (e.g. a run's runs/<run>/model.pt), else <bundle>/models/model.ts (TorchScript, from
'medaug export'; runs without the network code), else <bundle>/models/model.pt (a training checkpoint, loaded
into the network that configs/inference.json describes). 'medaug export <bundle>/runs/<run>' fills models/.

network: classifier, image_size, channels and class_names are null in configs/inference.json: the checkpoint's
record says them (model.json, written beside model.pt by training, copied by medaug export and embedded in
model.ts), so any run's checkpoint predicts without editing a file. A value given (an override or the config)
wins; one that contradicts the record (another classifier, size, channel count or number of classes) is a
usage error (exit 2) naming what the checkpoint was trained with. A checkpoint without a record uses the
config's settings#fallback (resnet18, 64 x 64 px, 1 channel, malignant/normal_benign).
modalities: null takes those of the record (the training preset's, e.g. US for the ultrasound preset): a DICOM
file of another modality is skipped with the reason in skipped.csv; --modalities any takes every modality.
The bundle may also come from the MEDAUG_BUNDLE environment variable;
with MEDAUG_BUNDLE_ONLY=1 (the Docker image) it is the only bundle: another --bundle or --trust-bundle is refused.

outputs (in --output; checked writable and locked before any work):
  predictions.csv, predictions.json  path (relative to --input), frame, sop_instance_uid, study_instance_uid,
                                     predicted, prob_<class> per class, model_name, model_version,
                                     checkpoint_sha256
  skipped.csv                        every file not used, with the reason
  summary.json                       run_id (a UUID), started_at and finished_at (UTC), counts, seconds,
                                     images/s, exit code, and the sha256 of the three other files
A run writes the four files into --output/.predict-<run_id>.tmp/ and renames them into place at the end,
summary.json last (the old one is removed first): a run that fails or is killed leaves the previous set as
it was, and a folder without summary.json holds no complete set. One run at a time: --output/.predict.lock
is held (flock, released by the system when a run dies) and a second run into the same folder is refused
(exit 2). In the CSV files, text that starts with = + - @, a tab or a carriage return gets a leading '
so that spreadsheets do not run it as a formula; the JSON files keep the raw values.
The input folder is only read. Patient names, IDs, birth dates and the other identifying attributes of the
DICOM PS3.15 Basic Profile never appear in outputs or messages; --hash-uids replaces the UIDs too.

untrusted bundles: MONAI evaluates '$' expressions and imports any '_target_' of a config, so a bundle can run
code. Without --trust-bundle, predict first checks what evaluating the config's 'prediction' reaches (model,
network_def for a .pt checkpoint, preprocessing, inferer, postprocessing, the settings, and whatever they
reference) and stops with exit 2 if one could run code: a '$' expression other than $torch.<dtype>,
$len(@<id>) or $@<id>['<key>'], a _target_ that is not a MONAI/medaug transform, inferer or network (or
medaug's load_model, model_info, model_settings, FolderPrediction), or a _mode_ other than the default. The
config's imports are not run then, and 'device' (an expression) is always set by --device. The shipped
bundles and the Docker image's baked bundle pass this check.

exit codes:
  0  every file was used
  3  finished, but some files were skipped (see skipped.csv)
  2  usage or configuration error (the message names the argument), including an --output that cannot be
     written or that another run is writing to
  1  unexpected failure
"""


def _add_grid_image_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    """The preset, image and output options show-augmentations and show-corruptions share."""
    parser.add_argument("--preset", default="generic", help="preset name or YAML file (default: generic)")
    parser.add_argument(
        "--image", help="image file: DICOM, PNG/JPEG, NIfTI, .npz (with --index), or 'archive.npz#split/index'"
    )
    parser.add_argument("--out", help="grid image to write (PNG; written atomically)")
    parser.add_argument(
        "--size",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="resize the image first, as a bundle's preprocessing would (default: as read)",
    )
    parser.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 grayscale, 3 RGB")
    parser.add_argument("--index", type=int, default=0, help="image index in an .npz archive")
    parser.add_argument("--split", default=split, help=f"split of an .npz archive (default {split})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medaug",
        description="medaug: augmentation, generative oversampling and honest evaluation for small, "
        "class-imbalanced medical image datasets. Studies run as MONAI bundles: "
        "python -m monai.bundle run --config_file bundles/<study>/configs/train.json --bundle_root bundles/<study>",
        epilog="Exit codes: 0 success, 1 unexpected failure, 2 usage or data error (the message names the cause), "
        "3 (predict) finished with some files skipped.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = commands.add_parser("data", help="inspect a dataset")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    info = data_commands.add_parser(
        "info",
        help="classes, counts per class and split, sizes, modalities, skipped files, cross-split duplicates",
        description="Index a dataset the way a bundle would and report what it holds: classes, counts per class and "
        "split, image sizes, modalities, files that cannot be used (and why), images whose pixels appear in "
        "more than one split (leaks) and identical images with different labels.",
        epilog="Skipped files (listed with a reason, as in a bundle's skipped.csv): files that are not images, "
        "cannot be decoded, have no class (no CSV row, not inside a class folder), hidden files and folders (a name "
        "starting with '.'; not read) and named pipes, sockets or devices (never opened). Stops with exit 2, before "
        "decoding anything, when a labels.csv sits beside or above dataset_dir but is not used (name it with "
        "--labels-csv, or set --data-format folder), when a label or class folder is not in --class-names, or when "
        "the CSV gives one file conflicting rows (the message names the lines).",
    )
    info.add_argument("dataset_dir", help="an .npz archive, a folder per class, or a DICOM folder with labels.csv")
    info.add_argument(
        "--data-format",
        "--data_format",
        choices=["npz", "folder", "dicom_csv"],
        help="override layout detection (also: read class folders and ignore a labels.csv above)",
    )
    info.add_argument(
        "--labels-csv",
        "--labels_csv",
        help="labels CSV for a DICOM folder (default: <dataset_dir>/labels.csv; paths in it are "
        "relative to dataset_dir)",
    )
    info.add_argument(
        "--class-names",
        "--class_names",
        nargs="+",
        metavar="NAME",
        help="the classes a bundle expects (its class_names), in order; a label or class folder "
        "outside them is an error (default: learn every class found; \"['a','b']\" and null are "
        "accepted too)",
    )
    info.add_argument(
        "--exclude", nargs="*", default=[], metavar="GLOB", help="file globs to leave out, e.g. '*_mask*'"
    )
    info.add_argument("--frames", choices=["middle", "all"], default="middle", help="frames of multi-frame files")
    info.add_argument("--seed", type=int, default=0, help="seed of the split when the source fixes none")
    info.add_argument("--max-list", type=int, default=20, help="longest list of leaks printed")
    info.add_argument(
        "--out",
        metavar="DIR",
        help="write skipped.csv, leaks.csv, conflicting_duplicates.csv and datalist.json (as a bundle run does) here",
    )
    info.add_argument(
        "--leaks",
        choices=["report", "drop_test", "error"],
        default="report",
        help="as the bundle's leaks key: count test images identical to a train/val image (report), leave them "
        "out of the counts (drop_test), or stop with exit 2 when any image sits in two splits (error)",
    )
    info.add_argument(
        "--conflicting-duplicates",
        "--conflicting_duplicates",
        choices=["exclude", "keep"],
        default="exclude",
        help="as the bundle's conflicting_duplicates key: identical images with different labels are left out "
        "of the counts (exclude, the default) or kept",
    )
    info.add_argument("--json", action="store_true", help="print everything as JSON")
    info.set_defaults(handler=data_info)

    pred = commands.add_parser(
        "predict",
        help="predict a folder of DICOM (and PNG/JPEG/NIfTI) files with a trained bundle",
        description="Walk --input recursively (DICOM with or without extension, PNG, JPEG, NIfTI), read every image "
        "the way the bundle's training read it, predict in batches, and write predictions.csv/.json and skipped.csv "
        "to --output, all as the bundle's configs/inference.json says (see below).",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pred.add_argument("--bundle", help=f"bundle folder (default: ${BUNDLE_ENV})")
    pred.add_argument("--checkpoint", help="model file: TorchScript .ts or checkpoint .pt (default: see below)")
    pred.add_argument("--input", help="folder of images to predict (read only)")
    pred.add_argument(
        "--output", help="folder for the outputs (created; must not be inside --input; one run at a time)"
    )
    pred.add_argument("--batch-size", type=_positive_int, help="images per model call (default: the bundle's)")
    pred.add_argument(
        "--workers",
        type=_positive_int,
        help="parallel decoders (default: the bundle's 'num_workers', null = min(4, CPU count))",
    )
    pred.add_argument(
        "--parallel",
        choices=["thread", "process"],
        help="decode in threads or in worker processes (default: the bundle's 'parallel')",
    )
    pred.add_argument("--frames", choices=["middle", "all"], help="frames of multi-frame files (default: the bundle's)")
    pred.add_argument(
        "--modalities",
        nargs="+",
        metavar="MOD",
        help="DICOM modalities the model takes, e.g. US, or 'any'; others are skipped (default: the bundle's "
        "'modalities', null = those the checkpoint's model.json records, any when it records none)",
    )
    pred.add_argument(
        "--hash-uids",
        action="store_true",
        help="replace SOP/Study Instance UIDs by salted hashes (HMAC-SHA256; default: the bundle's uid_salt, "
        "null = UIDs kept)",
    )
    pred.add_argument("--salt", help="salt for --hash-uids (prefer the MEDAUG_UID_SALT environment variable)")
    pred.add_argument(
        "--trust-bundle",
        action="store_true",
        help="evaluate the bundle's inference.json as it is, '$' expressions and any _target_ "
        "included (default: refuse those that could run code; see below)",
    )
    pred.add_argument("--device", help="torch device (default: cuda:0 if available, else cpu)")
    pred.add_argument("--no-progress", action="store_true", help="no progress bar")
    pred.set_defaults(handler=predict, config_overrides=[])

    exp = commands.add_parser(
        "export",
        help="put a training run's model into its bundle's models/ (model.pt, model.json, TorchScript model.ts)",
        description="Copy a run's checkpoint (runs/<run>/model.pt) and its record (model.json: classifier, image "
        "size, channels, class names, positive class, preprocessing, modalities) to MONAI's model-zoo place "
        "<bundle>/models/, and write models/model.ts, a TorchScript of that network whose embedded metadata "
        "(metadata.json's network_data_format, model.json, the inference config) is true to the run. Then "
        "'medaug predict --bundle <bundle>' predicts with it, no flag needed (configs/evaluate.json also reads "
        "models/model.pt). Files are written atomically; a "
        "different model already in models/ is kept (exit 2) unless --force.",
    )
    exp.add_argument(
        "run", help="the run folder (<bundle>/runs/<run>, holding model.pt and model.json) or its model.pt"
    )
    exp.add_argument(
        "--bundle", help="bundle to fill (default: the bundle whose runs/ holds the run, else $MEDAUG_BUNDLE)"
    )
    exp.add_argument("--force", action="store_true", help="replace a different model in <bundle>/models/")
    exp.set_defaults(handler=export)

    ev = commands.add_parser(
        "evaluate",
        help="score a saved checkpoint on a dataset's test split, clean and under the corruption suite",
        description="Run the bundle's configs/train.json + configs/evaluate.json through MONAI's bundle workflow "
        "(as 'python -m monai.bundle run --config_file \"[train.json, evaluate.json]\" --ckpt_path C' does; "
        "nothing is trained): the test split of the dataset scored by the checkpoint with bootstrap CIs and, "
        "as the bundle's evaluate#robustness says (on in every bundle, off in smoke overlays) or --robustness "
        "asks, under each corruption x severity of the suite. Writes metrics.json (with a 'robustness' "
        "section), predictions.csv, robustness.csv, robustness_curves.png and the plots to "
        "<output-dir>/evaluate-<classifier>-seed<seed>-<time>/ and logs them to an MLflow run (tag stage: "
        "evaluate; $MLFLOW_TRACKING_URI, else the store under --output-dir).",
        epilog="The checkpoint's record (model.json beside it, written by training and by medaug export) sets "
        "classifier, image_size, channels, class_names, positive_class and frames, so they need not be repeated; "
        "a classifier, size, channel count or class list given that contradicts it is a usage error. Any other "
        "'--key value' overrides that key of the bundle, as with monai.bundle run (e.g. --max_images_per_split 50, "
        "--tta flip, --evaluate#robustness#seed 1, --data_format folder). The dataset is split as the bundle "
        "splits it (its seed, split_fractions, or the dataset's own splits); only its test split is scored, and "
        "corrupted in memory only. Exit 2 on a missing bundle or checkpoint, a bad flag or setting.",
    )
    ev.add_argument("--bundle", help=f"bundle folder, e.g. bundles/imbalance_baselines (default: ${BUNDLE_ENV})")
    ev.add_argument(
        "--checkpoint",
        help="training checkpoint, e.g. <bundle>/runs/<run>/model.pt (default: <bundle>/models/model.pt)",
    )
    ev.add_argument("--dataset-dir", help="dataset to score (default: the bundle's dataset_dir)")
    ev.add_argument(
        "--output-dir", help="where the evaluation run's folder goes (default: the bundle's, <bundle>/runs)"
    )
    ev.add_argument(
        "--robustness",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score the corruption suite too, or not (default: the bundle's evaluate#robustness#enabled)",
    )
    ev.add_argument(
        "--suite", help="preset whose corruption suite is scored (default: the bundle's evaluate#robustness#suite)"
    )
    ev.add_argument(
        "--corruptions", nargs="+", metavar="NAME", help="score only these corruptions (default: the whole suite)"
    )
    ev.add_argument(
        "--severities",
        nargs="+",
        type=int,
        choices=range(1, 6),
        metavar="K",
        help="severities 1..5 to score (default: the bundle's, all five)",
    )
    ev.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="config overlay merged after configs/train.json, e.g. smoke.json (repeatable)",
    )
    ev.set_defaults(handler=evaluate, config_overrides=[])

    show = commands.add_parser(
        "show-augmentations",
        help="draw a grid of an image augmented by each transform of a preset",
        description="Read one image (DICOM, PNG/JPEG, NIfTI, or an .npz archive with --index), apply each transform of "
        "the preset on its own (probability forced to 1) and then the whole chain, several random draws each, and "
        "draw the grid to --out. Presets: chest_xray, ct, mri, ultrasound, generic, or a YAML file of your own.",
    )
    _add_grid_image_arguments(show, split="train")
    show.add_argument("--samples", type=_positive_int, default=4, help="random draws per transform (default 4)")
    show.add_argument("--seed", type=int, default=0, help="seed of the draws")
    show.add_argument("--overrides", help='JSON, as augment#overrides: {"affine": {"prob": 1.0}}')
    show.add_argument("--allow", nargs="*", default=[], metavar="RULE", help="'if_allowed' anatomy rules to lift")
    show.set_defaults(handler=show_augmentations)

    corr = commands.add_parser(
        "show-corruptions",
        help="draw the test-time corruption suite of a preset on an image (rows corruption, columns severity)",
        description="Read one image (DICOM, PNG/JPEG, NIfTI, or an .npz archive with --index) and draw the "
        "robustness suite of the preset (its YAML's corruptions list; generic and none: the acquisition-pipeline "
        "corruptions) to --out: one row per corruption, one column per severity, 0 (clean) to 5, each cell "
        "labelled with its physical parameter (dose fraction, JPEG quality, blur width, ...). The image is "
        "corrupted as evaluate#robustness corrupts a test image: seeded by its reference and --seed (the "
        "bundle's evaluate#robustness#seed), so the same image looks the same in every run.",
    )
    _add_grid_image_arguments(corr, split="test")
    corr.add_argument(
        "--corruptions", nargs="+", metavar="NAME", help="draw only these corruptions (default: the preset's suite)"
    )
    corr.add_argument("--seed", type=int, default=0, help="the suite's seed (default 0, as the bundles')")
    corr.set_defaults(handler=show_corruptions)
    pre = commands.add_parser(
        "pretrain",
        help="pretrain a zoo classifier without labels (SimCLR) on folders of images, for pretrained_path",
        description="Read every image below the FOLDERs (DICOM with or without extension, PNG, JPEG, NIfTI; the middle "
        "frame of multi-frame files), resize them to --image-size, and train the classifier's network with SimCLR "
        "(MONAI's ContrastiveLoss): two views of each image, a random resized crop followed by the --preset's "
        "transforms, so its anatomy rules hold. Writes --out, a state dict in the layout of the classifier built "
        "for --num-classes classes (every tensor pretrained except the classification head), which a bundle loads "
        "with --pretrained_path; beside it <out>.json (pool, loss per step, wall time) and <out>_skipped.csv.",
        epilog="Files that cannot be read are skipped and listed, not fatal; copies of one image are used once. "
        "The folders are only read. A bundle pretrains by itself with --pretrain#method simclr (the pool then "
        "leaves out every val/test image of the study); use this command for images outside a study, e.g. all "
        "your unlabeled scans. Exit 2 on a bad argument or fewer than 2 usable images.",
    )
    pre.add_argument("folders", nargs="+", metavar="FOLDER", help="folders of unlabeled images (read recursively)")
    pre.add_argument("--out", help="the checkpoint to write (.pt; written atomically)")
    pre.add_argument("--classifier", default="resnet18", help="zoo network (default: resnet18)")
    pre.add_argument(
        "--image-size", type=_positive_int, nargs=2, metavar=("H", "W"), default=[64, 64], help="default 64 64"
    )
    pre.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 grayscale (default), 3 RGB")
    pre.add_argument(
        "--num-classes", type=_positive_int, default=2, help="classes of the network that will load it (default 2)"
    )
    pre.add_argument("--preset", default="generic", help="augmentation preset or YAML file the views use")
    pre.add_argument("--allow", nargs="*", default=[], metavar="RULE", help="'if_allowed' anatomy rules to lift")
    pre.add_argument("--steps", type=_positive_int, default=300, help="optimizer steps (default 300)")
    pre.add_argument("--batch-size", type=_positive_int, default=64, help="images per step, two views each")
    pre.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 0.001)")
    pre.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature (default 0.5)")
    pre.add_argument("--seed", type=int, default=0, help="seed of the views, batches and initialisation")
    pre.add_argument(
        "--shipped", action="store_true", help="add the train splits of the datasets shipped in data/ to the pool"
    )
    pre.add_argument("--max-images", type=_positive_int, help="pretrain on a seeded draw of at most this many")
    pre.add_argument("--cache-dir", help="keep the pretraining here and reuse it when rerun (default: none kept)")
    pre.add_argument("--device", help="torch device (default: cuda:0 if available, else cpu)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bars")
    pre.set_defaults(handler=pretrain)
    study = commands.add_parser("study", help="run a bundle's study grid as MLflow child runs")
    study_commands = study.add_subparsers(dest="study_command", metavar="SUBCOMMAND")
    srun = study_commands.add_parser(
        "run",
        help="expand the grid and run every child run not yet finished (resumable)",
        description="Expand the bundle's grid (strategies x axes x seeds) into child runs of one MLflow parent run, "
        "each a 'python -m monai.bundle run' in a subprocess; skip children already finished with the same config "
        "hash, so an interrupted study resumes where it stopped.",
        epilog=STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    srun.add_argument("bundle", help="the bundle folder, e.g. bundles/imbalance_baselines")
    srun.add_argument("--grid", help="grid YAML (default: <bundle>/configs/grid.yaml)")
    srun.add_argument("--seeds", type=_positive_int, help="run seeds 0..N-1 instead of the grid's seeds")
    srun.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="config overlay merged after configs/train.json, e.g. smoke.json (repeatable)",
    )
    srun.add_argument("--output-dir", help="the children's output_dir (default: <bundle>/runs)")
    srun.add_argument(
        "--launcher",
        default="{python} -m monai.bundle run",
        help="command that runs one child (default: '%(default)s'; {python} is this interpreter)",
    )
    srun.add_argument(
        "--cache-dir",
        help="shared cache of the children, e.g. fitted generators "
        "(default: <output-dir>/cache; MEDAUG_CACHE_DIR in their environment)",
    )
    srun.add_argument("--max-children", type=_positive_int, help="stop after launching this many child runs")
    srun.add_argument("--stream", action="store_true", help="show the children's output (default: log files)")
    srun.add_argument("--no-progress", action="store_true", help="no progress bar")
    srun.add_argument(
        "--take-over",
        action="store_true",
        help="take the study's lock from another runner whose heartbeat is not stale yet "
        "(only when that runner is known to be gone; see below)",
    )
    srun.set_defaults(handler=study_run)

    rep = commands.add_parser(
        "report",
        help="HTML and Markdown report of a study: mean ± sd, CIs, paired tests, plots",
        description="Read the runs of an MLflow experiment (a study's child runs, or all finished runs), and write "
        "an HTML and a Markdown report: per strategy mean ± sd over seeds and 95% CI of every test metric; paired "
        "tests against the baseline on the same seeds and test images (McNemar, DeLong, paired bootstrap of "
        "balanced accuracy and Youden's J) with Holm correction; for runs scored under corruption "
        "(evaluate#robustness) the mean balanced accuracy under corruption and the relative drop from clean, with "
        "paired t-tests over seeds against the baseline, and a strategy x corruption table; plots. Cells of smoke "
        "or short runs, with fewer seeds than --min-seeds, or whose models predicted one class or sit at chance are "
        "marked, and a comparison so marked gives the reason instead of a verdict. The reports are logged to the "
        "parent run.",
    )
    rep.add_argument("--experiment", required=True, help="MLflow experiment (a bundle's name)")
    rep.add_argument("--baseline", help="strategy to test against (default: the grid's baseline)")
    rep.add_argument("--parent-run", help="the study's parent run id (default: the latest study in the experiment)")
    rep.add_argument("--out", help="output folder (default: <runs dir>/reports/<experiment>-<parent run>)")
    rep.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store <runs-dir>/mlflow.db)",
    )
    rep.add_argument("--runs-dir", help="a bundle's output_dir holding mlflow.db (default: bundles/<experiment>/runs)")
    rep.add_argument("--n-bootstrap", type=_positive_int, default=2000, help="paired bootstrap resamples")
    rep.add_argument("--no-log", action="store_true", help="do not log the reports to MLflow")
    rep.add_argument(
        "--min-seeds",
        type=_positive_int,
        help="seeds per cell the protocol asks; a comparison on fewer gets no verdict (default: 5)",
    )
    rep.add_argument(
        "--min-epochs",
        type=_positive_int,
        help="runs configured for fewer epochs are short runs and get no verdict, like smoke runs (default: 3)",
    )
    rep.set_defaults(handler=report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "handler", None) not in (predict, evaluate):  # they take config overrides
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.config_overrides = extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"medaug: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as err:
        print(f"medaug: error: {err}", file=sys.stderr)
        return EXIT_USAGE if args.command != "predict" else EXIT_FAILURE
    except KeyboardInterrupt:
        print("medaug: interrupted; no output file was left half-written", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:
        # the exception type only: messages of decoders may quote header values
        print(f"medaug: unexpected failure ({type(err).__name__}); run with -v for details", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
