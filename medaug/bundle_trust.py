"""What ``medaug predict`` evaluates of a bundle it does not trust.

MONAI's ``ConfigParser`` runs a ``$`` expression through ``eval`` and imports and calls any
``_target_``, so a bundle's ``configs/inference.json`` can run code: MONAI's own runner only warns
(GHSA-873f-pvrv-4x83). ``medaug predict`` evaluates that config's ``prediction`` (the model, the
network for a ``.pt`` checkpoint, the preprocessing, inferer and postprocessing, the settings);
unless the user passes ``--trust-bundle`` it refuses, before anything is evaluated, every part that
this reaches, directly or through ``@`` references, which could run code:

* a ``$`` expression, except three shapes that cannot: ``$torch.<dtype>`` (e.g. ``$torch.float32``),
  ``$len(@<id>)`` and ``$@<id>['<key>']`` (an item of what another part built, e.g. the model
  settings), whose reference is checked like everything else;
* a ``_target_`` outside ``monai.*`` / ``medaug.*``, or one that is neither a MONAI transform, a
  MONAI inferer, a ``torch.nn.Module`` nor one of :data:`SAFE_FACTORIES` (modules outside those
  packages are never imported to find out);
* a ``_mode_`` other than the default (``callable`` hands out a function, ``debug`` starts pdb).

``%`` macros are expanded first (they only read other JSON/YAML files), so what they bring in is
checked too. MONAI has no such check of its own; this builds on its parser's reference resolution.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SAFE_PREFIXES = ("monai.", "medaug.")
#: medaug callables a config may name: they build a network, load the model file (weights only, or
#: TorchScript), read the bundle's metadata or the model's record, or run the prediction into the folders the
#: caller names
SAFE_FACTORIES = (
    "medaug.models.build_classifier",
    "medaug.models.classifiers.build_classifier",
    "medaug.pipelines.predict.load_model",
    "medaug.pipelines.predict.model_info",
    "medaug.pipelines.predict.model_settings",
    "medaug.pipelines.predict.FolderPrediction",
)
_DTYPE_EXPRESSION = re.compile(r"\$\s*torch\.(\w+)\s*")
_LEN_EXPRESSION = re.compile(r"\$\s*len\(\s*@[\w:#]+\s*\)\s*")
_ITEM_EXPRESSION = re.compile(r"\$\s*@[\w:#]+\s*\[\s*'\w+'\s*\]\s*")


def _harmless_expression(text: str) -> bool:
    import torch

    dtype = _DTYPE_EXPRESSION.fullmatch(text)
    if dtype:
        return isinstance(getattr(torch, dtype.group(1), None), torch.dtype)
    return bool(_LEN_EXPRESSION.fullmatch(text) or _ITEM_EXPRESSION.fullmatch(text))


def _target_problem(item) -> str | None:
    """Why the ``_target_`` of a ``ConfigComponent`` may run code, or None."""
    from monai.inferers import Inferer
    from monai.transforms import Transform
    from monai.utils import optional_import
    from torch import nn

    config = item.get_config()
    if config.get("_mode_", "default") != "default":
        return f"_mode_ {config['_mode_']!r}"
    target = config.get("_target_")
    if not isinstance(target, str):
        return f"_target_ {target!r} is not a name"
    name = item.resolve_module_name()
    if not name.startswith(SAFE_PREFIXES):
        return f"_target_ {target!r} ({name}) is outside monai and medaug"
    module, _, attribute = name.rpartition(".")
    component, found = optional_import(module, name=attribute)
    if not found:
        return f"_target_ {target!r} ({name}) cannot be found"
    if name in SAFE_FACTORIES or isinstance(component, type) and issubclass(component, (Transform, Inferer, nn.Module)):
        return None
    return f"_target_ {target!r} ({name}) is neither a transform, an inferer nor a network"


def untrusted_parts(parser, keys: Iterable[str]) -> list[str]:
    """``"<id>: <why>"`` for each part of ``parser``'s config that evaluating ``keys`` would reach and
    that could run code (see the module docstring); empty when the keys are safe to evaluate.
    ``parser`` is a ``monai.bundle.ConfigParser``; it is parsed (macros expanded), nothing is evaluated."""
    from monai.bundle import ConfigComponent, ConfigExpression
    from monai.bundle.reference_resolver import ReferenceResolver

    parser.parse(reset=True)
    items = parser.ref_resolver.items
    sep = ReferenceResolver.sep
    queue = [ReferenceResolver.normalize_id(k) for k in keys]
    reached: set[str] = set()
    while queue:  # every id the keys reference, and what those reference in turn
        top = queue.pop()
        if top in reached or top not in items:
            continue
        reached.add(top)
        queue += ReferenceResolver.find_refs_in_config(items[top].get_config(), top)
    problems = set()
    for id, item in items.items():  # a reached item and everything nested in it
        if not any(id == top or id.startswith(top + sep) for top in reached):
            continue
        if isinstance(item, ConfigExpression) and not _harmless_expression(item.get_config()):
            problems.add(f"{id}: expression {item.get_config()!r}")
        elif isinstance(item, ConfigComponent) and (problem := _target_problem(item)):
            problems.add(f"{id}: {problem}")
    return sorted(problems)
