"""The ``medaug`` command: thin wrappers over the library for people who do not write configs.

Studies themselves run through MONAI's bundle runner (``python -m monai.bundle run ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def data_info(args: argparse.Namespace) -> int:
    from medaug.io import build_study_data

    data = build_study_data(
        args.dataset_dir, data_format=args.data_format, labels_csv=args.labels_csv, exclude=args.exclude,
        seed=args.seed, frames=args.frames, min_train_per_class=0, progress=sys.stderr.isatty(),
    )  # fmt: skip
    if args.json:
        info = data.fingerprint() | {"sizes": dict(data.sizes()), "modalities": dict(data.modalities()),
                                     "skipped_files": data.skipped, "leaks": data.leaks}  # fmt: skip
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    counts = data.counts()
    fixed = "as fixed by the source" if all(e.get("source") == "npz" for e in data.entries) else f"seed {args.seed}"
    print(f"dataset: {data.dataset_dir}\nformat:  {data.data_format}\nclasses: {', '.join(data.class_names)}")
    print(f"\nimages per class and split ({fixed}):")
    rows = [[name, *[counts[s][name] for s in ("train", "val", "test")], sum(counts[s][name] for s in counts)]
            for name in data.class_names]  # fmt: skip
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
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medaug",
        description="medaug: augmentation, generative oversampling and honest evaluation for small, "
        "class-imbalanced medical image datasets. Studies run as MONAI bundles: "
        "python -m monai.bundle run --config_file bundles/<study>/configs/train.json --bundle_root bundles/<study>",
        epilog="Exit codes: 0 success, 1 unexpected failure, 2 usage or data error (the message names the cause).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = commands.add_parser("data", help="inspect a dataset")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    info = data_commands.add_parser(
        "info", help="classes, counts per class and split, sizes, modalities, skipped files, cross-split duplicates",
        description="Index a dataset the way a bundle would and report what it holds: classes, counts per class and "
        "split, image sizes, modalities, files that cannot be used (and why), and images whose pixels appear in "
        "more than one split.",
    )  # fmt: skip
    info.add_argument("dataset_dir", help="an .npz archive, a folder per class, or a DICOM folder with labels.csv")
    info.add_argument("--data-format", choices=["npz", "folder", "dicom_csv"], help="override layout detection")
    info.add_argument("--labels-csv", help="labels CSV for a DICOM folder (default: <dataset_dir>/labels.csv)")
    info.add_argument("--exclude", nargs="*", default=[], metavar="GLOB", help="file globs to leave out, e.g. '*_mask*'")
    info.add_argument("--frames", choices=["middle", "all"], default="middle", help="frames of multi-frame files")
    info.add_argument("--seed", type=int, default=0, help="seed of the split when the source fixes none")
    info.add_argument("--max-list", type=int, default=20, help="longest list of leaks printed")
    info.add_argument("--json", action="store_true", help="print everything as JSON")
    info.set_defaults(handler=data_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"medaug: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
