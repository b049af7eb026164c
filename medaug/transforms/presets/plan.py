"""Modality presets: YAML files listing transforms (MONAI's own and medaug's) with their
probabilities and ranges, plus the anatomy rules those transforms must respect.

A preset file looks like::

    name: chest_xray
    description: ...
    modalities: [CR, DX]
    anatomy:                       # what a scanner never produces for this body part
      vertical_flip: {rule: never, why: the lung apices are always at the top}
      left_right_flip: {rule: if_allowed, why: the heart lies on the patient's left}
      rotate90: {rule: never, why: ...}
      max_rotation_deg: {rule: 10, why: ...}
    transforms:                    # id -> a MONAI config component, applied in this order
      affine: {_target_: RandAffined, prob: 0.5, rotate_range: 0.14, translate_range: "$[s // 20 for s in @image_size]"}
      artifacts:
        _target_: OneOf
        transforms: [{_target_: medaug.transforms.RandXrayScatterd, prob: 0.25}, ...]

Transform entries are MONAI bundle config components (``_target_`` plus arguments, ``$``
expressions and ``@image_size`` / ``@keys`` references allowed), parsed by MONAI's
``ConfigParser``; ``keys`` is filled in. Rules: ``never`` cannot be lifted, ``if_allowed`` holds
unless the bundle lists the rule in ``augment#allow``, ``allowed`` documents a freedom;
``max_rotation_deg`` bounds every rotation range. In 2D, spatial axis 0 is up-down (rows) and
axis 1 is left-right. Overrides (``augment#overrides``) map transform ids to argument changes
(merged into the entry), to a whole new entry (appended; its class in ``_target_``, or in
``transform`` inside a bundle config, where MONAI would instantiate a ``_target_`` before medaug
could check it), or to null (removed).
A preset or override that breaks a rule is rejected with an :class:`AnatomyRuleError` naming the key.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml
from monai.bundle import ConfigParser

# The public names are re-exported (and listed in __all__) by the presets package's face.

PRESET_DIR = Path(__file__).resolve().parent
PRESET_KEYS = {"name", "description", "modalities", "anatomy", "transforms", "corruptions"}
RULES = {"vertical_flip", "left_right_flip", "rotate90", "max_rotation_deg"}
RULE_VALUES = {"never", "if_allowed", "allowed"}
CONTAINERS = {"OneOf", "SomeOf", "Compose", "RandomOrder"}
# where each MONAI transform keeps its flips and rotations (radians), by argument name
FLIPS = {"RandFlipd": "spatial_axis", "Flipd": "spatial_axis", "RandAxisFlipd": None}
ROTATIONS = {
    "RandAffined": ("rotate_range",),
    "Affined": ("rotate_params",),
    "Rand2DElasticd": ("rotate_range",),
    "Rand3DElasticd": ("rotate_range",),
    "RandRotated": ("range_x", "range_y", "range_z"),
    "Rotated": ("angle",),
}
QUARTER_TURNS = {"RandRotate90d", "Rotate90d"}
AXIS_RULES = {0: "vertical_flip", 1: "left_right_flip"}


class PresetError(ValueError):
    """A preset file or override that cannot be used; the message names the file or key."""


class AnatomyRuleError(PresetError):
    """A transform that breaks an anatomy rule of its preset; the message names the key and the rule."""


def available_presets() -> list[str]:
    """Names of the presets shipped with medaug."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(preset: str | os.PathLike) -> tuple[dict, str]:
    """``(preset dict, source)``: a shipped preset by name, or a user's YAML file by path."""
    text = str(preset)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = PRESET_DIR / f"{text}.yaml"
        if not path.is_file():
            raise PresetError(
                f"augment#preset: {text!r} is neither a preset ({', '.join(available_presets())}) nor a YAML file"
            )
    if not path.is_file():
        raise PresetError(f"augment#preset: preset file {text!r} not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PresetError(f"augment#preset: {path} is not valid YAML ({err})") from err
    if not isinstance(config, dict):
        raise PresetError(f"augment#preset: {path} must hold a mapping with 'name' and 'transforms'")
    unknown = set(config) - PRESET_KEYS
    if unknown:
        raise PresetError(f"{path}: unknown key(s) {sorted(unknown)}; a preset has {sorted(PRESET_KEYS)}")
    if not isinstance(config.get("transforms"), dict):
        raise PresetError(f"{path}: 'transforms' must map transform ids to transform configs ({{}} for none)")
    config.setdefault("name", path.stem)
    config.setdefault("anatomy", {})
    return config, str(path)


def _short(target) -> str:
    return str(target).rsplit(".", 1)[-1]


def _axes_of(value, ndim: int = 2) -> set[int]:
    if value is None:
        return set(range(ndim))
    return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])}


def _max_abs(value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, (list, tuple)):
        return max((_max_abs(v) for v in value), default=0.0)
    return abs(float(value))


def _targets_from_bundle(node):
    """``{"transform": "RandFlipd", ...}`` -> ``{"_target_": "RandFlipd", ...}``, nested ones too: a
    bundle names the class of a new transform with ``transform``, since MONAI's config parser would
    instantiate a ``_target_`` itself before medaug could check it."""
    if isinstance(node, Mapping):
        node = {k: _targets_from_bundle(v) for k, v in node.items()}
        if isinstance(node.get("transform"), str) and "_target_" not in node:
            node = {"_target_": node.pop("transform"), **node}
        return node
    if isinstance(node, list):
        return [_targets_from_bundle(v) for v in node]
    return node


class AugmentationPlan:
    """A preset with its overrides applied and its anatomy rules checked, ready to build transforms.

    Args:
        preset: a shipped preset name (see :func:`available_presets`) or a YAML file path.
        overrides: ``{transform id: {argument: value} | full entry | None}``.
        allow: ``if_allowed`` rules lifted for this run, e.g. ``["left_right_flip"]``.
        image_size: spatial size the transforms will see (for ``@image_size`` in presets).
        keys: dictionary keys the transforms apply to.
        overrides_key, allow_key: how error messages name where overrides and lifted rules came from
            (the bundle keys by default; the CLI passes its option names).
    """

    def __init__(
        self,
        preset: str | os.PathLike = "generic",
        overrides: Mapping | None = None,
        allow: Sequence[str] | None = None,
        image_size: Sequence[int] | None = (64, 64),
        keys: str | Sequence[str] = "image",
        overrides_key: str = "augment#overrides",
        allow_key: str = "augment#allow",
    ) -> None:
        self.overrides_key, self.allow_key = overrides_key, allow_key
        base, self.source = load_preset(preset)
        self.name = str(base["name"])
        self.overrides = dict(overrides or {})
        self.allow = list(allow or [])
        self.image_size = list(image_size) if image_size is not None else None
        self.keys = keys
        self.anatomy = self._rules(base.get("anatomy") or {})
        self.config = {k: v for k, v in base.items() if k != "transforms"}
        self.config["transforms"] = self._merge(base["transforms"])
        self._check_allow()
        self._check_anatomy()

    # ----- building the config -------------------------------------------------------------------
    def _rules(self, anatomy: Mapping) -> dict[str, dict]:
        rules = {}
        for rule, entry in anatomy.items():
            entry = entry if isinstance(entry, dict) else {"rule": entry}
            where = f"{self.source}: anatomy#{rule}"
            if rule not in RULES:
                raise PresetError(f"{where}: unknown rule; rules are {sorted(RULES)}")
            value = entry.get("rule")
            if rule == "max_rotation_deg" and not isinstance(value, (int, float)):
                raise PresetError(f"{where}: rule must be a number of degrees, got {value!r}")
            if rule != "max_rotation_deg" and value not in RULE_VALUES:
                raise PresetError(f"{where}: rule must be one of {sorted(RULE_VALUES)}, got {value!r}")
            rules[rule] = {"rule": value, "why": str(entry.get("why", "")).strip()}
        return rules

    def _merge(self, transforms: Mapping) -> dict:
        merged = copy.deepcopy(dict(transforms))
        for tid, change in self.overrides.items():
            key = f"{self.overrides_key}#{tid}"
            if isinstance(change, Mapping):
                change = self.overrides[tid] = _targets_from_bundle(change)
            if tid == "anatomy":
                raise PresetError(
                    f"{key}: anatomy rules cannot be overridden; lift an 'if_allowed' rule with "
                    f"{self.allow_key}, or write your own preset file"
                )
            if change is None:
                merged.pop(tid, None)
            elif not isinstance(change, Mapping):
                raise PresetError(f"{key}: expected a mapping of arguments, a transform entry or null, got {change!r}")
            elif tid in merged and "_target_" not in change:
                merged[tid] = {**merged[tid], **copy.deepcopy(dict(change))}
            elif "_target_" in change:
                merged[tid] = copy.deepcopy(dict(change))
            else:
                raise PresetError(
                    f"{key}: preset {self.name!r} has no transform {tid!r} (it has "
                    f"{', '.join(merged)}); a new transform needs '_target_'"
                )
        for tid, entry in merged.items():
            if not isinstance(entry, Mapping) or "_target_" not in entry:
                raise PresetError(f"{self._where(tid, [])}: a transform entry needs '_target_'")
            merged[tid] = self._with_keys(entry)
        return merged

    def _with_keys(self, entry: Mapping) -> dict:
        entry = dict(entry)
        if _short(entry["_target_"]) in CONTAINERS:
            entry["transforms"] = [self._with_keys(e) for e in entry.get("transforms", [])]
        else:
            entry.setdefault("keys", "@keys")
        return entry

    def _parser(self, transforms: Mapping) -> ConfigParser:
        return ConfigParser(
            {"image_size": self.image_size, "keys": self.keys, "transforms": copy.deepcopy(dict(transforms))}
        )

    # ----- anatomy ---------------------------------------------------------------------------------
    def _where(self, tid: str, path: list) -> str:
        """Config key of an argument: in the bundle's overrides when it came from there, else in the preset file."""
        change = self.overrides.get(tid)
        tail = "#".join(str(p) for p in path)
        if isinstance(change, Mapping) and ("_target_" in change or (path and path[0] in change)):
            return f"{self.overrides_key}#{tid}" + (f"#{tail}" if tail else "")
        return f"{self.source}: transforms#{tid}" + (f"#{tail}" if tail else "")

    def _entries(self) -> Iterator[tuple[str, list, dict]]:
        """(top-level id, path below it, entry) for every transform, nested ones included."""

        def walk(tid, path, entry):
            yield tid, path, entry
            if _short(entry["_target_"]) in CONTAINERS:
                for i, child in enumerate(entry.get("transforms", [])):
                    yield from walk(tid, [*path, "transforms", i], child)

        for tid, entry in self.config["transforms"].items():
            yield from walk(tid, [], entry)

    def _check_allow(self) -> None:
        for rule in self.allow:
            if rule not in self.anatomy:
                raise PresetError(
                    f"{self.allow_key}: preset {self.name!r} has no rule {rule!r} to lift "
                    f"(its rules: {', '.join(self.anatomy) or 'none'})"
                )
            if self.anatomy[rule]["rule"] == "never":
                raise AnatomyRuleError(
                    f"{self.allow_key}: rule {rule!r} of preset {self.name!r} is 'never' and cannot "
                    f"be lifted ({self.anatomy[rule]['why']}); write your own preset file if your "
                    "images really need it"
                )

    def _forbidden(self, rule: str) -> bool:
        entry = self.anatomy.get(rule)
        return entry is not None and (
            entry["rule"] == "never" or (entry["rule"] == "if_allowed" and rule not in self.allow)
        )

    def _fail(self, tid: str, path: list, rule: str, what: str) -> None:
        entry = self.anatomy[rule]
        raise AnatomyRuleError(
            f"{self._where(tid, path)}: {what} breaks the anatomy rule '{rule}: {entry['rule']}' "
            f"of preset {self.name!r} ({entry['why']})"
        )

    def _check_anatomy(self) -> None:
        parser = self._parser(self.config["transforms"])
        for tid, path, entry in self._entries():
            name = _short(entry["_target_"])
            base = "#".join(["transforms", tid, *[str(p) for p in path]])

            def value(arg, default=None, base=base, entry=entry):
                return parser.get_parsed_content(f"{base}#{arg}") if arg in entry else default

            if float(value("prob", 1.0)) == 0.0:
                continue  # switched off
            if name in FLIPS:
                arg = FLIPS[name]
                axes = _axes_of(value(arg) if arg else None)
                for axis in sorted(axes):
                    rule = AXIS_RULES.get(axis)
                    if rule and self._forbidden(rule):
                        what = f"{name} flips spatial axis {axis}" + (
                            "" if arg and arg in entry else " (all axes by default)"
                        )
                        self._fail(tid, [*path, arg] if arg and arg in entry else path, rule, what)
            if name in QUARTER_TURNS and self._forbidden("rotate90"):
                self._fail(tid, path, "rotate90", f"{name} turns the image by quarter turns")
            limit = self.anatomy.get("max_rotation_deg")
            for arg in ROTATIONS.get(name, ()):
                degrees = math.degrees(_max_abs(value(arg)))
                if limit is not None and degrees > float(limit["rule"]) + 1e-9:
                    self._fail(tid, [*path, arg], "max_rotation_deg", f"{name} rotates by up to {degrees:.1f} degrees")

    # ----- products --------------------------------------------------------------------------------
    def flip_axes(self) -> list[int]:
        """The spatial axes the plan's flips (``RandFlipd``, ``Flipd``, ``RandAxisFlipd``; nested ones too,
        those with ``prob`` 0 not) may flip, sorted: what test-time flip augmentation may average over."""
        parser = self._parser(self.config["transforms"])
        axes: set[int] = set()
        for tid, path, entry in self._entries():
            name = _short(entry["_target_"])
            if name not in FLIPS:
                continue
            base = "#".join(["transforms", tid, *[str(p) for p in path]])
            if "prob" in entry and float(parser.get_parsed_content(f"{base}#prob")) == 0.0:
                continue
            arg = FLIPS[name]
            axes |= _axes_of(parser.get_parsed_content(f"{base}#{arg}") if arg and arg in entry else None)
        return sorted(axes)

    def transforms(self) -> list:
        """The train-only dictionary transforms, in order (put them in a MONAI ``Compose``)."""
        parser = self._parser(self.config["transforms"])
        return [parser.get_parsed_content(f"transforms#{tid}") for tid in self.config["transforms"]]

    def steps(self) -> list[tuple[str, object]]:
        """``(label, transform)`` for each transform on its own, nested ones too, with ``prob`` set to 1
        (what the augmentation grid shows, one row each)."""
        parser = self._parser(self.config["transforms"])
        steps = []
        for tid, path, entry in self._entries():
            name = _short(entry["_target_"])
            if name in CONTAINERS or name in ("Identity", "Identityd"):
                continue  # nothing to show: a container's members get rows, the identity has no effect
            transform = parser.get_parsed_content("#".join(["transforms", tid, *[str(p) for p in path]]))
            if hasattr(transform, "prob"):
                transform.prob = 1.0
            label = tid if not path else f"{tid}[{path[-1]}]"
            steps.append((f"{label}: {name}", transform))
        return steps

    def to_yaml(self) -> str:
        """The preset as applied (overrides merged, ``keys`` filled in), for MLflow and for reading."""
        doc = {**self.config, "source": self.source, "allow": self.allow, "overrides": self.overrides}
        return yaml.safe_dump(doc, sort_keys=False)


def build_augmentation(
    preset: str | os.PathLike = "generic",
    overrides: Mapping | None = None,
    allow: Sequence[str] | None = None,
    image_size: Sequence[int] | None = (64, 64),
    keys: str | Sequence[str] = "image",
) -> list:
    """The list of train-only dictionary transforms of a preset (see :class:`AugmentationPlan`)."""
    return AugmentationPlan(preset, overrides, allow, image_size, keys).transforms()
