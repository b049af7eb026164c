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

Nothing is dropped silently and nothing is guessed: the walk (:func:`walk_input`, shared with
``medaug predict``) lists hidden files and folders, named pipes, sockets and devices, unreadable
files and link loops as skipped and never opens a non-regular file; labels are checked before any
image is read (:class:`LabelsError`): a ``labels.csv`` beside or above ``dataset_dir`` that is not
named, a label or class folder outside ``class_names`` (when set; see
:func:`resolve_class_names`), and CSV rows that give one file different labels.
"""

from __future__ import annotations

import csv
import difflib
import errno
import fnmatch
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from medaug.io.npz import npz_ref, npz_splits
from medaug.io.phi import pseudonym
from medaug.io.readers import IMAGE_SUFFIXES, UnusableImageError, is_dicom, read_dicom_header

logger = logging.getLogger("medaug.data")
DATA_FORMATS = ("npz", "folder", "dicom_csv")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
CSV_KEYS = ("path", "sopinstanceuid", "studyinstanceuid", "patientid")  # most specific first
DEFAULT_LABELS_CSV = "labels.csv"
HIDDEN_FILE = "hidden file (name starts with '.'), not read; rename it to use it"
HIDDEN_FOLDER = "hidden folder (name starts with '.'), not searched; rename it to use its files"
NOT_REGULAR = "not a regular file (named pipe, socket or device)"


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


def is_excluded(relative: str | Path, exclude: Sequence[str]) -> bool:
    """True when a glob of ``exclude`` matches the path relative to ``dataset_dir`` or its file name."""
    rel = Path(relative).as_posix()
    return any(fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(Path(rel).name, pattern) for pattern in exclude)


def walk_files(root: Path, exclude: Sequence[str] = ()) -> Iterable[tuple[Path, str]]:
    """The files of :func:`walk_input` without its list of what was left out: regular files only (a
    named pipe is never opened), hidden entries and ``exclude`` globs left out. Callers that report
    skipped files use :func:`walk_input` itself."""
    files, _ = walk_input(root, exclude)
    yield from files


def printable(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (``os.walk`` keeps them as surrogates, which
    no CSV or JSON writer accepts) become ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def walk_input(root: str | os.PathLike, exclude: Sequence[str] = ()) -> tuple[list[tuple[Path, str]], list[dict]]:
    """Every regular file below ``root`` as ``(path, relative posix path)``, in a stable order, plus
    ``{path, reason}`` for what is not read: unreadable folders and files, symbolic-link loops,
    broken links, named pipes, sockets and devices (which would block or never end if opened), and
    hidden files and folders.

    Symbolic links to folders are followed once: a link back to a folder already visited (a loop,
    or the same folder twice) is reported and not followed. Hidden entries (a name starting with
    ``.``: ``.DS_Store``, AppleDouble ``._x.dcm`` files, ``.git``, ``.ipynb_checkpoints`` copies) are
    not read, since they are tool metadata or duplicates far more often than images, but each one
    is reported (a hidden folder once, not searched). Only what an ``exclude`` glob matches is left
    out silently: the user asked for it. Nothing is opened: files are ``stat``-ed only.
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
            if is_excluded(path.relative_to(root), exclude):
                continue
            if name.startswith("."):
                problems.append({"path": relative(path), "reason": HIDDEN_FOLDER})
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
            if is_excluded(rel, exclude):
                continue
            if name.startswith("."):
                problems.append({"path": printable(rel.as_posix()), "reason": HIDDEN_FILE})
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
                reason = NOT_REGULAR
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


class LabelsError(ValueError):
    """The labels of a dataset cannot be trusted as they stand (a labels CSV beside the folder that is
    not used, a label outside ``class_names``, one file given two labels). The message names the
    file, rows or folders and the setting that fixes it; raised before any image is decoded."""


def labels_csv_above(dataset_dir: str | os.PathLike) -> Path | None:
    """The nearest ``labels.csv`` in a folder above ``dataset_dir`` (first beside it, in its parent)."""
    for folder in Path(dataset_dir).resolve().parents:
        try:
            if (folder / DEFAULT_LABELS_CSV).is_file():
                return folder / DEFAULT_LABELS_CSV
        except OSError:  # an unreadable folder higher up holds nothing we can use
            continue
    return None


def _unused_labels_csv_message(root: Path, found: Path) -> str:
    where = "beside" if found.parent == root.resolve().parent else "above"
    return (
        f"dataset_dir {str(root)!r} has no {DEFAULT_LABELS_CSV} of its own, but {str(found)!r} sits {where} it and is "
        f"not read unless you say so. To label the images with it, set labels_csv (--labels_csv {str(found)!r}; its "
        f"path column, if any, is relative to dataset_dir); to read dataset_dir as one folder per class and ignore "
        f"that file, set data_format (--data_format folder)"
    )


def detect_format(dataset_dir: str | os.PathLike, labels_csv: str | None = None) -> str:
    """Which of :data:`DATA_FORMATS` a ``dataset_dir`` holds.

    A ``labels.csv`` inside ``dataset_dir`` (or ``labels_csv``) means ``dicom_csv``. One beside or
    above a folder that would otherwise be read as class folders (or not at all) raises
    :class:`LabelsError`: sub-folders such as ``site0``/``site1`` must not silently become classes
    while the labels sit next to them. An explicit ``data_format`` skips this detection.
    """
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
    has_folders = any(p.is_dir() for p in visible)
    if not has_folders and len([p for p in visible if p.suffix.lower() == ".npz"]) == 1:
        return "npz"
    above = labels_csv_above(root)
    if above is not None:
        raise LabelsError(_unused_labels_csv_message(root, above))
    if has_folders:
        return "folder"
    raise ValueError(
        f"cannot tell the layout of dataset_dir {str(root)!r}: expected an .npz archive, class subfolders, "
        f"or DICOM files with a {DEFAULT_LABELS_CSV}; set data_format to one of {DATA_FORMATS}"
    )


def _lines(numbers: Sequence[int], most: int = 8) -> str:
    """``line 4`` / ``lines 3, 7, 9`` / ``lines 3, 7, ... (12 rows)``."""
    shown = ", ".join(str(n) for n in numbers[:most])
    if len(numbers) > most:
        shown += f", ... ({len(numbers)} rows)"
    return f"line{'s' if len(numbers) > 1 else ''} {shown}"


def resolve_class_names(
    found: Iterable[str],
    class_names: Sequence[str] | None,
    *,
    where: str,
    occurrences: dict[str, str] | None = None,
    fix: str = "",
) -> list[str]:
    """The classes of a run, in label-index order.

    ``class_names`` unset (None or empty): every class found is learnt, in sorted order (numerically
    when all are integers). Set: it is the list of classes and their order, and a class found
    outside it (a typo such as ``maligant``, a ``site0`` folder) raises :class:`LabelsError` listing
    each with where it occurs (``occurrences``) and a close match; a listed class without images is
    kept (its count is 0, which training refuses by name).
    """
    found = set(found)
    if not class_names:
        return _class_order(found)
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string {class_names!r}")
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names {names} names a class twice")
    unknown = sorted(found - set(names))
    if not unknown:
        return names
    described = []
    for label in unknown:
        notes = [occurrences[label]] if occurrences and label in occurrences else []
        notes += [f"did you mean {close!r}?" for close in difflib.get_close_matches(label, names, n=1)]
        described.append(repr(label) + (f" ({'; '.join(notes)})" if notes else ""))
    learnt = _class_order(found | set(names))
    raise LabelsError(
        f"{where} has {len(unknown)} class(es) not in class_names {names}: {'; '.join(described)}. "
        f"{fix}If they are real classes, set class_names to all classes of this dataset "
        f'(--class_names "{learnt}"), or to null (--class_names null) to learn every class found'
    )


def _entry(image: str, label: int, class_name: str, *, split=None, patient_id=None, source: str, **extra) -> dict:
    return {
        "image": image,
        "label": int(label),
        "class_name": class_name,
        "patient_id": patient_id,
        "split": split,
        "source": source,
        "synthetic": False,
        **extra,
    }


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


def folder_entries(
    dataset_dir: str | os.PathLike, exclude: Sequence[str] = (), class_names: Sequence[str] | None = None
) -> tuple[list, list, list]:
    """Entries of a folder-per-class tree, below optional split folders. Every file not used is in
    the skipped list with its reason: not an image, not inside a class folder, hidden, not a
    regular file (see :func:`walk_input`). Class folders must be in ``class_names`` when it is set
    (see :func:`resolve_class_names`)."""
    root = Path(dataset_dir)
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in top if p.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(top):
        others = [p.name for p in top if p not in split_dirs]
        raise ValueError(f"{root}: mixes split folders {[p.name for p in split_dirs]} with other folders {others}")
    groups = [(normalise_split(p.name), p) for p in split_dirs] if split_dirs else [(None, root)]
    class_dirs = {
        (split, d.name): d
        for split, base in groups
        for d in sorted(base.iterdir())
        if d.is_dir() and not d.name.startswith(".") and not is_excluded(d.relative_to(root), exclude)
    }
    found = {name for _, name in class_dirs}
    folders = {
        name: [printable(d.relative_to(root).as_posix()) for (_, n), d in class_dirs.items() if n == name]
        for name in found
    }
    names = resolve_class_names(
        found,
        class_names,
        where=f"dataset_dir {str(root)!r}",
        occurrences={name: "folder " + ", ".join(paths) for name, paths in folders.items()},
        fix="Rename those folders, or leave them out (--exclude \"['<folder>']\"). ",
    )
    if len(found) < 2:
        raise ValueError(f"{root}: found {len(found)} class folder(s) {sorted(found)}; a classifier needs at least 2")
    owner = {printable(d.relative_to(root).as_posix()): (split, name) for (split, name), d in class_dirs.items()}
    depth = 2 if split_dirs else 1
    files, skipped = walk_input(root, exclude)
    entries = []
    for path, relative in files:
        parts = relative.split("/")
        split, name = owner.get("/".join(parts[:depth]), (None, None)) if len(parts) > depth else (None, None)
        if name is None:
            where = "a split folder's class folder" if split_dirs else "a class folder"
            skipped.append({"path": relative, "reason": f"not inside {where}, so it has no class"})
            continue
        if not looks_like_image(path):
            skipped.append({"path": relative, "reason": "not an image file (unknown type, not DICOM)"})
            continue
        entries.append(
            _entry(str(path.resolve()), names.index(name), name, split=split, source="folder", relpath=relative)
        )
    return entries, names, skipped


def _read_labels_csv(csv_path: Path) -> tuple[list[dict], str]:
    """Rows keyed by normalised column names (plus ``_line``, the row's line in the file), and the
    key column that identifies files."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise ValueError(f"labels CSV {csv_path} is empty")
        columns = {_column_key(c): c for c in reader.fieldnames}
        rows = []
        for row in reader:
            rows.append(
                {_column_key(k): (v or "").strip() for k, v in row.items() if k is not None}
                | {"_line": reader.line_num}
            )
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


def _shown_key(key: str, value: str) -> str:
    # a PatientID is an identifier: messages and records name its pseudonym, never the ID itself
    return f"{key_label(key)} {pseudonym(value) if key == 'patientid' else value!r}"


def _rows_by_key(rows: list[dict], key: str, csv_path: Path) -> dict[str, dict]:
    """One row per key value. Rows that give one file different labels, splits or patients raise
    :class:`LabelsError` naming the lines; exact repeats are used once, with a warning."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        try:
            row["split"] = normalise_split(row.get("split"))
        except ValueError as err:
            raise ValueError(f"labels CSV {csv_path} line {row['_line']}: {err}") from None
        value = Path(row[key]).as_posix() if key == "path" and row[key] else row[key]
        groups.setdefault(value, []).append(row)
    row_of, conflicts, repeats = {}, [], []
    for value, group in groups.items():
        labelled = [row for row in group if row.get("label")] or group[:1]
        fields = {(row.get("label"), row.get("split"), row.get("patientid") or None) for row in labelled}
        if len(fields) > 1:
            differ = [
                name for i, name in enumerate(("label", "split", "patient_id")) if len({f[i] for f in fields}) > 1
            ]
            rows_text = ", ".join(
                f"{row['_line']} (label {row['label']!r}" + (f", split {row['split']!r})" if row["split"] else ")")
                for row in labelled
            )
            conflicts.append(f"{_shown_key(key, value)} on lines {rows_text} differ in {' and '.join(differ)}")
        elif len(labelled) > 1:
            repeats.append(f"{_shown_key(key, value)} ({_lines([row['_line'] for row in labelled])})")
        row_of[value] = labelled[0]
    if conflicts:
        shown = "; ".join(conflicts[:10]) + (f"; ... ({len(conflicts)} in all)" if len(conflicts) > 10 else "")
        raise LabelsError(
            f"labels CSV {str(csv_path)!r} has conflicting rows for {len(conflicts)} {key_label(key)}(s): {shown}. "
            f"Keep one row per {key_label(key)} (or make the repeated rows agree) and run again"
        )
    if repeats:
        logger.warning(
            "labels CSV %s repeats %d %s(s) with the same label; each is used once: %s",
            csv_path,
            len(repeats),
            key_label(key),
            "; ".join(repeats[:5]),
        )
    return row_of


def dicom_csv_entries(
    dataset_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    exclude: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
) -> tuple[list, list, list]:
    """Entries of a DICOM folder labelled by a CSV (see the module docstring for the key columns).

    The CSV is checked before any image is read: conflicting rows for one file and labels outside
    ``class_names`` (when set) raise :class:`LabelsError` naming the lines. Files without a row, rows
    without a file and rows with an empty label are listed in the skipped records.
    """
    root = Path(dataset_dir)
    csv_path = Path(labels_csv) if labels_csv else root / DEFAULT_LABELS_CSV
    if not csv_path.is_absolute() and not csv_path.exists():
        csv_path = root / csv_path
    if not csv_path.is_file():
        above = None if labels_csv else labels_csv_above(root)
        hint = f"; {str(above)!r} sits above dataset_dir: --labels_csv {str(above)!r} uses it" if above else ""
        raise FileNotFoundError(f"labels CSV {str(csv_path)!r} not found (set labels_csv: --labels_csv <path>){hint}")
    rows, key = _read_labels_csv(csv_path)
    row_of = _rows_by_key(rows, key, csv_path)
    lines_of: dict[str, list[int]] = {}
    for row in rows:
        if row.get("label"):
            lines_of.setdefault(row["label"], []).append(row["_line"])
    names = resolve_class_names(
        lines_of,
        class_names,
        where=f"labels CSV {str(csv_path)!r}",
        occurrences={label: _lines(lines) for label, lines in lines_of.items()},
        fix="Correct those labels in the CSV. ",
    )

    entries, used = [], set()
    files, skipped = walk_input(root, exclude)
    for path, relative in files:
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
            value = {
                "sopinstanceuid": header["sop_instance_uid"],
                "studyinstanceuid": header["study_instance_uid"],
                "patientid": header["patient_id"],
            }[key]
            if value not in row_of:
                skipped.append({"path": relative, "reason": f"its {key_label(key)} has no row in {csv_path.name}"})
                continue
        row = row_of[value]
        used.add(value)
        if not row.get("label"):
            reason = f"its row in {csv_path.name} (line {row['_line']}) has an empty label"
            skipped.append({"path": relative, "reason": reason})
            continue
        entries.append(
            _entry(
                str(path.resolve()),
                names.index(row["label"]),
                row["label"],
                split=row["split"],
                patient_id=row.get("patientid") or None,
                source="dicom_csv",
                relpath=relative,
            )
        )
    for value in sorted(set(row_of) - used):
        # a PatientID is an identifier: the record names its pseudonym, never the ID itself
        shown = pseudonym(value) if key == "patientid" else value
        skipped.append({"path": shown, "reason": f"{csv_path.name} row ({key_label(key)}) matches no file"})
    return entries, names, skipped


def key_label(key: str) -> str:
    return {
        "path": "path",
        "sopinstanceuid": "SOPInstanceUID",
        "studyinstanceuid": "StudyInstanceUID",
        "patientid": "PatientID",
    }[key]


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
        entries, names, skipped = folder_entries(dataset_dir, exclude, class_names)
    else:
        entries, names, skipped = dicom_csv_entries(dataset_dir, labels_csv, exclude, class_names)
    return fmt, entries, names, skipped
