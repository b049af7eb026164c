"""Data sources -> datalist entries.

Three layouts of ``dataset_dir`` are understood, detected by :func:`detect_format` and overridable
with ``data_format``:

* ``npz``: a MedMNIST-layout archive (or a folder holding exactly one), its splits kept;
* ``folder``: one subfolder per class of PNG/JPEG/DICOM/NIfTI files, optionally below split
  folders (``train``/``training``, ``val``/``validation``, ``test``/``testing``, any case);
* ``dicom_csv``: a folder of DICOM files (any names, searched recursively) plus a labels CSV whose
  key column is ``path``, ``SOPInstanceUID``, ``StudyInstanceUID`` or ``PatientID``.

Each source returns entries that carry ``image``, ``label``, ``class_name``, ``patient_id`` (None
where only the pixels' headers can tell), ``split`` (None where the layout fixes none), ``source``
and ``synthetic=False``, plus the files it had to leave out with a reason. Reading the pixels, and
skipping what cannot be decoded, happens later in :mod:`medaug.io.scan`.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from medaug.io.npz import npz_ref, npz_splits
from medaug.io.phi import pseudonym
from medaug.io.readers import IMAGE_SUFFIXES, UnusableImageError, is_dicom, read_dicom_header

DATA_FORMATS = ("npz", "folder", "dicom_csv")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
CSV_KEYS = ("path", "sopinstanceuid", "studyinstanceuid", "patientid")  # most specific first
DEFAULT_LABELS_CSV = "labels.csv"


def normalise_split(name: str | None) -> str | None:
    """``'Training'`` -> ``'train'``; None or '' -> None; anything else is an error."""
    if name is None or str(name).strip() == "":
        return None
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {name!r}; use one of {sorted(set(SPLIT_ALIASES))}")
    return SPLIT_ALIASES[key]


def _column_key(name: str) -> str:
    """CSV header matching: case-insensitive, underscores, spaces and dashes ignored."""
    return re.sub(r"[\s_\-]", "", name).lower()


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def is_excluded(relative: str | Path, exclude: Sequence[str]) -> bool:
    """True when a glob of ``exclude`` matches the path relative to ``dataset_dir`` or its file name."""
    rel = Path(relative).as_posix()
    return any(fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(Path(rel).name, pattern) for pattern in exclude)


def walk_files(root: Path, exclude: Sequence[str] = ()) -> Iterable[tuple[Path, str]]:
    """Files below ``root`` in a stable order as ``(absolute path, relative posix path)``;
    hidden files and folders and ``exclude`` globs are left out."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            relative = path.relative_to(root)
            if _is_hidden(relative) or is_excluded(relative, exclude):
                continue
            yield path, relative.as_posix()


def printable(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (``os.walk`` keeps them as surrogates, which
    no CSV or JSON writer accepts) become ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def walk_input(root: str | os.PathLike, exclude: Sequence[str] = ()) -> tuple[list[tuple[Path, str]], list[dict]]:
    """Every regular file below ``root`` as ``(path, relative posix path)``, in a stable order, plus
    ``{path, reason}`` for what cannot be visited: unreadable folders and files, symbolic-link loops,
    broken links, named pipes and devices (which would block or never end if opened).

    Symbolic links to folders are followed once: a link back to a folder already visited (a loop,
    or the same folder twice) is reported and not followed. Hidden entries and ``exclude`` globs are
    left out silently, as in :func:`walk_files`. Nothing is opened for writing.
    """
    root = Path(root)
    files, problems = [], []
    seen = {os.path.realpath(root)}

    def relative(path) -> str:
        try:
            return printable(Path(path).relative_to(root).as_posix())
        except ValueError:
            return printable(str(path))

    def on_error(err: OSError) -> None:
        problems.append({"path": relative(err.filename), "reason": f"folder cannot be read ({err.strerror or err})"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            path = Path(dirpath) / name
            if name.startswith(".") or is_excluded(path.relative_to(root), exclude):
                continue
            real = os.path.realpath(path)
            if real in seen:
                here = os.path.realpath(dirpath)
                if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                    reason = "symbolic link loop (points back to a folder above it), not followed"
                else:
                    reason = "same folder as another path already read (through a symbolic link), not read twice"
                problems.append({"path": relative(path), "reason": reason})
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root)
            if _is_hidden(rel) or is_excluded(rel, exclude):
                continue
            try:
                info = os.stat(path)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    reason = "symbolic link loop"
                elif path.is_symlink() and isinstance(err, FileNotFoundError):
                    reason = "broken symbolic link (target does not exist)"
                else:
                    reason = f"cannot read file ({err.strerror or err})"
                problems.append({"path": printable(rel.as_posix()), "reason": reason})
                continue
            if not stat.S_ISREG(info.st_mode):
                reason = "not a regular file (named pipe, socket or device)"
                problems.append({"path": printable(rel.as_posix()), "reason": reason})
                continue
            if not os.access(path, os.R_OK):
                problems.append({"path": printable(rel.as_posix()), "reason": "cannot read file (permission denied)"})
                continue
            files.append((path, printable(rel.as_posix())))
    return files, problems


def looks_like_image(path: Path) -> bool:
    """Known image suffix, or a DICOM file under any name (PACS exports often have none)."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    return path.suffix.lower() in IMAGE_SUFFIXES or suffixes in IMAGE_SUFFIXES or is_dicom(path)


def detect_format(dataset_dir: str | os.PathLike, labels_csv: str | None = None) -> str:
    """Which of :data:`DATA_FORMATS` a ``dataset_dir`` holds."""
    root = Path(dataset_dir)
    if not root.exists():
        raise FileNotFoundError(f"dataset_dir {str(root)!r} does not exist")
    if root.is_file():
        if root.suffix.lower() == ".npz":
            return "npz"
        raise ValueError(f"dataset_dir {str(root)!r} is a file but not an .npz archive")
    if labels_csv or (root / DEFAULT_LABELS_CSV).is_file():
        return "dicom_csv"
    visible = [p for p in root.iterdir() if not p.name.startswith(".")]
    if any(p.is_dir() for p in visible):
        return "folder"
    if len([p for p in visible if p.suffix.lower() == ".npz"]) == 1:
        return "npz"
    raise ValueError(
        f"cannot tell the layout of dataset_dir {str(root)!r}: expected an .npz archive, class subfolders, "
        f"or DICOM files with a {DEFAULT_LABELS_CSV}; set data_format to one of {DATA_FORMATS}"
    )


def _entry(image: str, label: int, class_name: str, *, split=None, patient_id=None, source: str, **extra) -> dict:
    return {
        "image": image, "label": int(label), "class_name": class_name, "patient_id": patient_id,
        "split": split, "source": source, "synthetic": False, **extra,
    }  # fmt: skip


def npz_entries(dataset_dir: str | os.PathLike, class_names: Sequence[str] | None = None) -> tuple[list, list, list]:
    """Entries of a MedMNIST archive. MedMNIST has no patient identifiers, so each image is its own
    patient (``<split>-<index>``); its official splits are kept."""
    path = Path(dataset_dir)
    if path.is_dir():
        path = next(p for p in sorted(path.iterdir()) if p.suffix.lower() == ".npz")
    splits = npz_splits(path)
    n_classes = 1 + max(int(labels.max()) for _, labels in splits.values())
    names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
    if len(names) < n_classes:
        raise ValueError(f"{path}: labels go up to {n_classes - 1} but class_names has only {len(names)} names")
    entries = [
        _entry(npz_ref(path, split, i), label, names[label], split=split, patient_id=f"{split}-{i}", source="npz")
        for split, (_, labels) in splits.items()
        for i, label in enumerate(labels)
    ]
    return entries, names[:n_classes], []


def folder_entries(dataset_dir: str | os.PathLike, exclude: Sequence[str] = ()) -> tuple[list, list, list]:
    """Entries of a folder-per-class tree, below optional split folders."""
    root = Path(dataset_dir)
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in top if p.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(top):
        others = [p.name for p in top if p not in split_dirs]
        raise ValueError(f"{root}: mixes split folders {[p.name for p in split_dirs]} with other folders {others}")
    groups = [(normalise_split(p.name), p) for p in split_dirs] if split_dirs else [(None, root)]
    class_dirs = {(split, d.name): d for split, base in groups for d in sorted(base.iterdir())
                  if d.is_dir() and not d.name.startswith(".") and not is_excluded(d.relative_to(root), exclude)}  # fmt: skip
    names = sorted({name for _, name in class_dirs})
    if len(names) < 2:
        raise ValueError(f"{root}: found {len(names)} class folder(s) {names}; a classifier needs at least 2")
    entries, skipped = [], []
    for (split, name), class_dir in class_dirs.items():
        for path, _ in walk_files(class_dir, exclude):
            relative = path.relative_to(root).as_posix()
            if is_excluded(relative, exclude):
                continue
            if not looks_like_image(path):
                skipped.append({"path": relative, "reason": "not an image file (unknown type, not DICOM)"})
                continue
            entries.append(_entry(str(path.resolve()), names.index(name), name, split=split, source="folder",
                                  relpath=relative))  # fmt: skip
    return entries, names, skipped


def _read_labels_csv(csv_path: Path) -> tuple[list[dict], str]:
    """Rows keyed by normalised column names, and the key column that identifies files."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise ValueError(f"labels CSV {csv_path} is empty")
        columns = {_column_key(c): c for c in reader.fieldnames}
        rows = [{_column_key(k): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if "label" not in columns:
        raise ValueError(f"labels CSV {csv_path} has no 'label' column (columns: {list(columns.values())})")
    key = next((k for k in CSV_KEYS if k in columns), None)
    if key is None:
        raise ValueError(
            f"labels CSV {csv_path} has no key column; add one of path, SOPInstanceUID, StudyInstanceUID, PatientID"
        )
    return rows, key


def _class_order(labels: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer (so '10' follows '9')."""
    unique = set(labels)
    if all(re.fullmatch(r"-?\d+", value) for value in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def dicom_csv_entries(
    dataset_dir: str | os.PathLike, labels_csv: str | os.PathLike | None = None, exclude: Sequence[str] = ()
) -> tuple[list, list, list]:
    """Entries of a DICOM folder labelled by a CSV (see the module docstring for the key columns)."""
    root = Path(dataset_dir)
    csv_path = Path(labels_csv) if labels_csv else root / DEFAULT_LABELS_CSV
    if not csv_path.is_absolute() and not csv_path.exists():
        csv_path = root / csv_path
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV {str(csv_path)!r} not found (set labels_csv)")
    rows, key = _read_labels_csv(csv_path)
    rows = [row for row in rows if row.get("label")]
    names = _class_order(row["label"] for row in rows)
    row_of = {}
    for row in rows:
        value = Path(row[key]).as_posix() if key == "path" else row[key]
        row_of.setdefault(value, row)

    entries, skipped, used = [], [], set()
    for path, relative in walk_files(root, exclude):
        if path.resolve() == csv_path.resolve():
            continue
        if key == "path":
            value = relative
            if value not in row_of:
                if looks_like_image(path):
                    skipped.append({"path": relative, "reason": f"no row for this file in {csv_path.name}"})
                else:
                    skipped.append({"path": relative, "reason": "not an image file (unknown type, not DICOM)"})
                continue
        else:
            try:
                header = read_dicom_header(path)
            except UnusableImageError as err:
                skipped.append({"path": relative, "reason": err.reason})
                continue
            value = {"sopinstanceuid": header["sop_instance_uid"], "studyinstanceuid": header["study_instance_uid"],
                     "patientid": header["patient_id"]}[key]  # fmt: skip
            if value not in row_of:
                skipped.append({"path": relative, "reason": f"its {key_label(key)} has no row in {csv_path.name}"})
                continue
        row = row_of[value]
        used.add(value)
        entries.append(
            _entry(str(path.resolve()), names.index(row["label"]), row["label"], split=normalise_split(row.get("split")),
                   patient_id=row.get("patientid") or None, source="dicom_csv", relpath=relative)  # fmt: skip
        )
    for value in sorted(set(row_of) - used):
        # a PatientID is an identifier: the record names its pseudonym, never the ID itself
        shown = pseudonym(value) if key == "patientid" else value
        skipped.append({"path": shown, "reason": f"{csv_path.name} row ({key_label(key)}) matches no file"})
    return entries, names, skipped


def key_label(key: str) -> str:
    return {"path": "path", "sopinstanceuid": "SOPInstanceUID", "studyinstanceuid": "StudyInstanceUID",
            "patientid": "PatientID"}[key]  # fmt: skip


def source_entries(
    dataset_dir: str | os.PathLike,
    data_format: str | None = None,
    *,
    labels_csv: str | None = None,
    exclude: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
) -> tuple[str, list, list, list]:
    """``(format, entries, class names, skipped)`` for any supported ``dataset_dir``."""
    fmt = data_format or detect_format(dataset_dir, labels_csv)
    if fmt not in DATA_FORMATS:
        raise ValueError(f"data_format {fmt!r} is not one of {DATA_FORMATS}")
    if fmt == "npz":
        entries, names, skipped = npz_entries(dataset_dir, class_names)
    elif fmt == "folder":
        entries, names, skipped = folder_entries(dataset_dir, exclude)
    else:
        entries, names, skipped = dicom_csv_entries(dataset_dir, labels_csv, exclude)
    return fmt, entries, names, skipped
