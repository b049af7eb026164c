"""Settings errors that name the key, the bad value and the fix, and the "did you mean" behind them.

A :class:`SettingsError` is a user's mistake in a setting (a misspelled key, a method name that does not
exist, a class the data does not have, a missing folder), not a bug: under ``monai.bundle run`` it is
printed as one short message and the run exits 2 (:mod:`medaug.bundle_errors`). Close matches come from
:func:`difflib.get_close_matches`; a match that differs only in case is always offered first, never
applied silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping

__all__ = ["SettingsError", "check_choice", "config_flag", "did_you_mean", "unknown_keys"]

_UNSET = object()


class SettingsError(ValueError):
    """A setting that cannot work: ``key``, the ``value`` given and how to ``fix`` it.

    The message reads ``<key> = <value>: <problem>; <fix>``, e.g. ``oversample#method = 'gann': not
    one of none, random, gan, ...; did you mean 'gan'?``. A ``ValueError``, so code that catches those
    keeps working.
    """

    def __init__(self, key: str, problem: str, fix: str = "", value=_UNSET) -> None:
        self.key, self.problem, self.fix = key, problem, fix
        self.value = None if value is _UNSET else value
        shown = "" if value is _UNSET else f" = {value!r}"
        super().__init__(f"{key}{shown}: {problem}" + (f"; {fix}" if fix else ""))


def did_you_mean(value, choices: Iterable, normalize=str.lower) -> str | None:
    """The choice ``value`` was most likely meant to be, or None.

    A choice equal to ``value`` once both are normalized (case, and whatever ``normalize`` folds)
    wins; otherwise the closest by :func:`difflib.get_close_matches` (ratio >= 0.6).
    """
    text = str(value)
    by_norm = {normalize(str(c)): str(c) for c in choices}
    if normalize(text) in by_norm:
        return by_norm[normalize(text)]
    close = difflib.get_close_matches(normalize(text), list(by_norm), n=1)
    return by_norm[close[0]] if close else None


def check_choice(key: str, value, choices: Iterable, what: str = "one of", normalize=None):
    """``value`` if it is one of ``choices`` (after ``normalize``, when given), else a
    :class:`SettingsError` listing them with the closest as "did you mean"."""
    choices = [str(c) for c in choices]
    norm = normalize or (lambda s: s)
    if norm(str(value)) in {norm(c) for c in choices}:
        return value
    guess = did_you_mean(value, choices, **({"normalize": normalize} if normalize else {}))
    fix = f"did you mean {guess!r}?" if guess else f"set {key} to one of them"
    raise SettingsError(key, f"not {what} {', '.join(choices)}", fix, value=value)


_FLAG_WORDS = {"true": True, "false": False}


def config_flag(key: str, value) -> bool:
    """``value`` as a boolean: a bool, or the words ``true`` / ``false`` in any case.

    Python Fire, behind ``monai.bundle run``, passes ``--ema#enabled false`` as the string
    ``"false"``, which ``bool()`` reads as true; the words are converted here and anything else
    (another string, a number, None) is a :class:`SettingsError` rather than a silent guess.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _FLAG_WORDS:
        return _FLAG_WORDS[value.strip().lower()]
    raise SettingsError(key, "must be true or false", "write true or false", value=value)


def _children(node) -> list[str]:
    if isinstance(node, Mapping):
        return [str(k) for k in node]
    if isinstance(node, list):
        return [str(i) for i in range(len(node))]
    return []


def _child(node, name: str):
    if isinstance(node, Mapping):
        return node.get(name, _UNSET)
    if isinstance(node, list) and name.isdigit() and int(name) < len(node):
        return node[int(name)]
    return _UNSET


# A key added to a nested section without a _target_ is taken for a typo only this close to a key it has:
# such sections (e.g. a generator's settings) legitimately take keys the defaults do not spell out.
NESTED_TYPO_CUTOFF = 0.8


def unknown_keys(
    keys: Iterable[str], config: Mapping, sep: str = "#", accepts_new: Callable[[Mapping, str], bool] | None = None
) -> dict[str, str | None]:
    """``{key: nearest known id or None}`` for each of ``keys`` (config ids such as ``a#b``) that
    ``config`` does not have.

    The nearest is the closest sibling of the missing part, so ``max_epoch`` suggests ``max_epochs``
    and ``oversample#mehtod`` suggests ``oversample#method``. A new top-level key is always unknown.
    A new last part added to a section that has a ``_target_`` is unknown unless
    ``accepts_new(section, name)`` says the target takes that keyword; added to another nested
    section, only if it is a near miss (ratio >= :data:`NESTED_TYPO_CUTOFF`) of a key it has.
    """
    unknown = {}
    for key in keys:
        parts = str(key).split(sep)
        node, depth = config, 0
        while depth < len(parts) and _child(node, parts[depth]) is not _UNSET:
            node, depth = _child(node, parts[depth]), depth + 1
        if depth == len(parts):
            continue
        name, siblings, prefix = parts[depth], _children(node), sep.join(parts[:depth])
        last, nested = depth == len(parts) - 1, depth > 0
        if last and nested and isinstance(node, Mapping):
            if "_target_" in node:
                if accepts_new is not None and accepts_new(node, name):
                    continue
            elif not difflib.get_close_matches(name, siblings, n=1, cutoff=NESTED_TYPO_CUTOFF):
                continue
        close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
        unknown[key] = f"{prefix}{sep}{close[0]}" if close and prefix else (close[0] if close else None)
    return unknown
