"""Write the study bundles' configs from the default bundle plus each study's overrides.

The five study bundles (``bundles/<study>``) are self-contained MONAI bundles, as the model zoo
expects, but all of them share the default bundle's pipeline (data, augmentation, oversampling,
trainer, evaluation, MLflow). Copying ``train.json`` five times by hand would let the copies drift
apart; instead each study states only what it changes, in ``scripts/study_bundles/<study>.yaml``:

    name: hybrid_gan_augmentation
    version: "0.1.1"
    changelog: {"0.1.1": what changed, "0.1.0": first release ...}   # newest first, as in metadata.json
    train: {config key in monai.bundle '#' syntax: value, ...}   # laid over the default train.json
    smoke: {...}                                                  # laid over the default smoke.json
    inference: {...}                                              # laid over the default inference.json
    metadata: {...}                                               # laid over the default metadata.json

and this script writes ``configs/{train,smoke,evaluate,inference,multi_gpu_train,metadata}.json``,
``configs/logging.conf`` and ``LICENSE`` of every study bundle. ``configs/grid.yaml`` and
``docs/README.md`` are the study's own and are never touched. ``--check`` exits 1 when a committed
file differs from what would be written (the test suite runs it), so edit the YAML, not the JSON.
A generated file keeps the default file's key order and layout (see ``render_like``): its diff
against the default shows only the study's overrides, and keys a study adds come at the end of
their section. The output depends only on the input files, so rerunning it changes nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "bundles" / "imbalance_baselines"
SPECS = Path(__file__).resolve().parent / "study_bundles"
GENERATED_CONFIGS = ("train", "smoke", "evaluate", "inference", "multi_gpu_train", "metadata")
# Overlay files whose own top-level keys are monai.bundle ids ("oversample#gan"): a study's
# overrides add or replace those keys as they are, instead of walking into nested sections.
OVERLAY_CONFIGS = ("smoke", "evaluate", "multi_gpu_train")
COPIED = ("configs/logging.conf", "LICENSE")
HEADER_KEY = "_generated_by"  # a note in every generated JSON; monai.bundle ignores unknown top-level keys


def set_path(config: dict, key: str, value) -> None:
    """``config["a"]["b"] = value`` for ``key`` ``"a#b"`` (monai.bundle's id syntax); a missing
    parent is an error, so a renamed section of the default bundle cannot be silently skipped."""
    *parents, last = key.split("#")
    node = config
    for i, part in enumerate(parents):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"{'#'.join(parents[: i + 1])!r} is not in the default config (setting {key!r})")
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def overlay(base: dict, overrides: dict | None, flat: bool = False) -> dict:
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if flat:
            out[key] = value
        else:
            set_path(out, key, value)
    return out


# Layout-preserving JSON writing. ``json.dumps`` cannot keep the default files' hand layout (short lists
# and sections on one line, long sections wrapped): re-serialising a study's config from the parsed dict
# turned every inline list into one line per element, so a study's diff against the default showed
# ~128 changed lines for ~49 real overrides. Instead the default's text is patched: the stdlib scanner
# gives every value's position, unchanged values keep their text, a changed value is written where the
# old one was (on one line if the old one was and it fits), and a new key goes next to its neighbour
# in the new dict's order (so keys appended by an overlay land at the end of their section).
WIDTH = 120  # the project's line length, for values written on one line
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_INDENT = re.compile(r"[ \t]*")
_DECODER = json.JSONDecoder()


class Span(NamedTuple):
    """Where one JSON value lies in a text: ``text[start:end]``; for an object or array, where each
    member starts (its key's quote, or the element itself) and the member's own span. (A named tuple,
    not a dataclass: the tests load this script by path, without a ``sys.modules`` entry.)"""

    start: int
    end: int
    members: dict[str | int, tuple[int, Span]] | None = None


def value_spans(text: str, pos: int = 0) -> Span:
    """The span tree of the JSON value at ``pos`` (after any whitespace) of ``text``."""
    pos = _WHITESPACE.match(text, pos).end()
    opener = text[pos : pos + 1]
    if opener not in ("{", "["):
        _, end = _DECODER.raw_decode(text, pos)
        return Span(pos, end)
    closer = "}" if opener == "{" else "]"
    members: dict[str | int, tuple[int, Span]] = {}
    i = _WHITESPACE.match(text, pos + 1).end()
    if text[i : i + 1] == closer:
        return Span(pos, i + 1, members)
    while True:
        member_start = i
        if opener == "{":
            key, i = json.decoder.scanstring(text, i + 1)
            i = _WHITESPACE.match(text, i).end()
            if text[i : i + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            i += 1
        else:
            key = len(members)
        child = value_spans(text, i)
        members[key] = (member_start, child)
        i = _WHITESPACE.match(text, child.end).end()
        if text[i : i + 1] == ",":
            i = _WHITESPACE.match(text, i + 1).end()
        elif text[i : i + 1] == closer:
            return Span(pos, i + 1, members)
        else:
            raise json.JSONDecodeError(f"Expecting ',' or {closer!r}", text, i)


def _same(a, b) -> bool:
    """Equal and written the same: types match (``1``, ``1.0`` and ``true`` are ``==`` in Python, not in
    JSON) and so does the key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _indent_at(text: str, pos: int) -> str:
    return _INDENT.match(text, _line_start(text, pos)).group()


def _dumps(value, indent: str, taken: int, expand: bool, compact_inner: bool) -> str:
    """``value`` as JSON on a line indented by ``indent`` whose other text takes ``taken`` characters:
    on one line unless ``expand`` or it would pass ``WIDTH``; the members of an expanded value one per
    line, each again on one line if ``compact_inner`` and it fits (the hand layout), else expanded (the
    ``json.dumps(indent=4)`` layout)."""
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list)) or not value or (not expand and taken + len(flat) <= WIDTH):
        return flat
    inner = indent + "    "
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            prefix = json.dumps(key, ensure_ascii=False) + ": "
            items.append(prefix + _dumps(item, inner, len(inner + prefix) + 1, not compact_inner, compact_inner))
        opener, closer = "{", "}"
    else:
        items = [_dumps(item, inner, len(inner) + 1, not compact_inner, compact_inner) for item in value]
        opener, closer = "[", "]"
    return opener + "\n" + ",\n".join(inner + item for item in items) + "\n" + indent + closer


def render_like(base_text: str, data) -> str:
    """``data`` as JSON laid out like ``base_text`` (a JSON text): what ``data`` shares with it keeps
    its text byte for byte, so a diff against ``base_text`` shows only what ``data`` changes."""
    base = json.loads(base_text)
    # A file in json.dumps's own layout gets new values in that layout; a hand-laid one, the hand layout.
    compact = base_text.strip() != json.dumps(base, indent=4, ensure_ascii=False)
    edits: list[tuple[int, int, str]] = []
    _patch(base_text, value_spans(base_text), base, data, edits, compact)
    text = base_text
    for start, end, new in sorted(edits, key=lambda edit: edit[0], reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _patchable_object(text: str, span: Span, old, new) -> bool:
    """Whether ``new`` can be written member by member into the object ``old``: both objects, the old
    keys kept in their order, and not an object on one line that gains keys (that one is rewritten
    whole, so that it is expanded if it no longer fits)."""
    if not (isinstance(old, dict) and isinstance(new, dict) and old):
        return False
    grows_on_one_line = len(new) > len(old) and "\n" not in text[span.start : span.end]
    return [key for key in new if key in old] == list(old) and not grows_on_one_line


def _patch(text: str, span: Span, old, new, edits: list, compact: bool) -> None:
    if _same(old, new):
        return
    if _patchable_object(text, span, old, new):
        for key in old:
            _patch(text, span.members[key][1], old[key], new[key], edits, compact)
        _insert_keys(text, span, old, new, edits, compact)
        return
    if isinstance(old, list) and isinstance(new, list) and old and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _patch(text, span.members[i][1], a, b, edits, compact)
        return
    # A value that was on one line stays on one line if it fits (hand layout); else it is expanded.
    one_line = compact and "\n" not in text[span.start : span.end]
    rest_of_line = text[span.end :].split("\n", 1)[0]
    taken = span.start - _line_start(text, span.start) + len(rest_of_line)
    rendered = _dumps(new, _indent_at(text, span.start), taken, expand=not one_line, compact_inner=compact)
    edits.append((span.start, span.end, rendered))


def _insert_keys(text: str, span: Span, old: dict, new: dict, edits: list, compact: bool) -> None:
    """Write the keys of ``new`` that ``old`` lacks after the old key that precedes them in ``new``
    (or before the first one), separated as the object's first member is from its brace."""
    first_start = span.members[next(iter(old))][0]
    separator = text[span.start + 1 : first_start] or " "
    indent = separator.rsplit("\n", 1)[-1] if "\n" in separator else _indent_at(text, first_start)
    groups: dict[str | None, list[str]] = {}
    anchor = None
    for key, value in new.items():
        if key in old:
            anchor = key
            continue
        prefix = json.dumps(key, ensure_ascii=False) + ": "
        if "\n" in separator:  # one member a line: the new one too, its value laid out as the file's
            member = prefix + _dumps(value, indent, len(indent + prefix) + 1, not compact, compact)
        else:  # an object on one line (or wrapped by hand): the new member joins it on one line
            member = prefix + json.dumps(value, ensure_ascii=False)
        groups.setdefault(anchor, []).append(member)
    for anchor, members in groups.items():
        if anchor is None:
            edits.append((first_start, first_start, "".join(m + "," + separator for m in members)))
        else:
            end = span.members[anchor][1].end
            edits.append((end, end, "".join("," + separator + m for m in members)))


def changelog(spec: dict) -> dict[str, str]:
    """The study's ``changelog`` (version -> what changed, newest first) for its metadata.json; the
    version the study declares must have an entry, as the model zoo's checks require."""
    version, log = spec.get("version"), spec.get("changelog")
    if not isinstance(version, str):
        raise ValueError(f"{spec['name']}: 'version' must be a quoted string such as \"0.1.1\", not {version!r}")
    if not isinstance(log, dict) or not all(isinstance(v, str) for v in log):
        raise ValueError(f"{spec['name']}: 'changelog' must map quoted version strings to what changed")
    if version not in log:
        raise ValueError(f"{spec['name']}: 'changelog' has no entry for version {version!r}")
    return {str(v): str(text) for v, text in log.items()}


def bundle_files(spec: dict) -> dict[str, str]:
    """Relative path -> text of every generated file of one study bundle."""
    name = spec["name"]
    note = (
        "generated by scripts/build_study_bundles.py from bundles/imbalance_baselines and "
        f"scripts/study_bundles/{name}.yaml; edit those"
    )
    files = {}
    for config in GENERATED_CONFIGS:
        base_text = (BASE / "configs" / f"{config}.json").read_text()
        base = json.loads(base_text)
        data = overlay(base, spec.get(config), flat=config in OVERLAY_CONFIGS)
        if config == "metadata":
            data["version"], data["changelog"] = spec["version"], changelog(spec)
        else:
            data = {HEADER_KEY: note, **data}
        files[f"configs/{config}.json"] = render_like(base_text, data)
    for rel in COPIED:
        files[rel] = (BASE / rel).read_text()
    return files


def load_specs(names: list[str] | None = None) -> list[dict]:
    paths = sorted(SPECS.glob("*.yaml"))
    specs = [yaml.safe_load(p.read_text()) for p in paths]
    for path, spec in zip(paths, specs):
        if spec.get("name") != path.stem:
            raise ValueError(f"{path}: 'name' must be {path.stem!r}")
    return [s for s in specs if not names or s["name"] in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the study bundles' generated configs.")
    parser.add_argument("studies", nargs="*", help="study names (default: all in scripts/study_bundles/)")
    parser.add_argument(
        "--check", action="store_true", help="report files that differ from the generated ones; write nothing"
    )
    args = parser.parse_args(argv)
    stale = []
    for spec in load_specs(args.studies):
        root = REPO / "bundles" / spec["name"]
        for rel, text in bundle_files(spec).items():
            path = root / rel
            if path.is_file() and path.read_text() == text:
                continue
            if args.check:
                stale.append(str(path.relative_to(REPO)))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            shutil.copymode(BASE / rel if (BASE / rel).exists() else tmp, tmp)
            tmp.replace(path)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print("out of date (run `python scripts/build_study_bundles.py`):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
