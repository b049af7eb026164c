"""A study grid: the spec in ``configs/grid.yaml``, its cells, its children and their config hashes.

Takes a grid file (or mapping) and gives :class:`Grid` and the list of :class:`Child` runs the
runner launches (strategies x axes x seeds, duplicates dropped); :func:`config_hash` is what a
child computes over the merged configs and its overrides, and :func:`cell_name` is the row of the
report the seeds of one child share. The YAML form is described in :mod:`medaug.pipelines.study.runner`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medaug.pipelines.tracking.tracker import safe_key

# The overlay that makes a bundle run a smoke run: the runner warns when a grid overrides it, the
# report marks the runs whose configs include it.
SMOKE_OVERLAY = "smoke.json"
GRID_FIELDS = ("description", "axes", "strategies", "strategy_key", "baseline", "seeds", "seed_key", "amount_key")


class GridError(ValueError):
    """A grid file that cannot be used; the message names the file and the offending key."""


def canonical(obj) -> str:
    """JSON with sorted keys and no spaces: the form that hashes and tags compare."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_sha(obj) -> str:
    """SHA-256 of :func:`canonical`."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def _label(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def cell_name(strategy: str, axes: dict) -> str:
    """The strategy with its other axis values: what the seeds of one row of a report share."""
    rest = ", ".join(f"{k}={_label(v)}" for k, v in axes.items())
    return f"{strategy} ({rest})" if rest else strategy


@dataclass
class Grid:
    """A parsed, not yet validated grid (see the module docstring for the file format)."""

    axes: dict[str, list]
    strategies: dict[str, dict]
    strategy_key: str
    baseline: str | None
    seeds: list[int]
    seed_key: str = "seed"
    amount_key: str | None = None
    description: str = ""
    source: str = "<grid>"

    @property
    def named_strategies(self) -> bool:
        return bool(self.strategies)

    def without_seeds(self) -> dict:
        """What identifies the study across ``--seeds N``: the cells, not the seeds or the description."""
        return {k: v for k, v in self.as_dict().items() if k in ("axes", "strategies", "strategy_key", "seed_key")}

    def as_dict(self) -> dict:
        return {
            "description": self.description,
            "axes": self.axes,
            "strategies": self.strategies,
            "strategy_key": self.strategy_key,
            "baseline": self.baseline,
            "seeds": self.seeds,
            "seed_key": self.seed_key,
            "amount_key": self.amount_key,
            "source": self.source,
        }


def _seed_list(value, where: str) -> list[int]:
    if isinstance(value, bool):
        raise GridError(f"{where}: 'seeds' must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise GridError(f"{where}: 'seeds' must be at least 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise GridError(f"{where}: 'seeds' lists a seed twice: {value}")
        return list(value)
    raise GridError(f"{where}: 'seeds' must be a count or a non-empty list of integers, got {value!r}")


def parse_grid(data: Mapping, source: str = "<grid>", seeds: int | None = None) -> Grid:
    """Check the structure of a grid mapping; ``seeds`` (``--seeds N``) replaces its seeds by 0..N-1."""
    if not isinstance(data, Mapping):
        raise GridError(
            f"{source}: a grid must be a mapping with 'axes' (and optional 'strategies'), got {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(GRID_FIELDS))
    if unknown:
        raise GridError(f"{source}: unknown grid field(s) {unknown}; allowed: {list(GRID_FIELDS)}")
    axes = data.get("axes") or {}
    if not isinstance(axes, Mapping):
        raise GridError(f"{source}: 'axes' must map config keys to lists of values")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{source}: axis {key!r} must be a non-empty list of values, got {values!r}")
    strategies = data.get("strategies") or {}
    if not isinstance(strategies, Mapping) or not all(isinstance(v, Mapping) for v in strategies.values()):
        raise GridError(f"{source}: 'strategies' must map names to dicts of config overrides")
    seed_key = str(data.get("seed_key", "seed"))
    if seed_key in axes or any(seed_key in s for s in strategies.values()):
        raise GridError(f"{source}: the seed key {seed_key!r} is set by 'seeds', not by an axis or strategy")
    if strategies:
        strategy_key = str(data.get("strategy_key", "strategy"))
        if strategy_key != "strategy":
            raise GridError(
                f"{source}: with named 'strategies' the strategy is the name; drop 'strategy_key' ({strategy_key!r})"
            )
    else:
        if not axes:
            raise GridError(f"{source}: a grid needs 'axes' or 'strategies'")
        strategy_key = str(data.get("strategy_key", next(iter(axes))))
        if strategy_key not in axes:
            raise GridError(f"{source}: strategy_key {strategy_key!r} is not one of the axes {list(axes)}")
    amount_key = data.get("amount_key")
    if amount_key is not None and amount_key not in axes:
        raise GridError(f"{source}: amount_key {amount_key!r} is not one of the axes {list(axes)}")
    seed_values = list(range(seeds)) if seeds is not None else _seed_list(data.get("seeds", 1), source)
    grid = Grid(
        axes={str(k): list(v) for k, v in axes.items()},
        strategies={str(k): dict(v) for k, v in strategies.items()},
        strategy_key=strategy_key,
        baseline=None if data.get("baseline") is None else str(data.get("baseline")),
        seeds=seed_values,
        seed_key=seed_key,
        amount_key=amount_key,
        description=str(data.get("description", "")),
        source=source,
    )
    labels = [c.strategy for c in expand_grid(grid)]
    if grid.baseline is not None and grid.baseline not in labels:
        raise GridError(f"{source}: baseline {grid.baseline!r} is none of the strategies {sorted(set(labels))}")
    return grid


def load_grid(path: str | os.PathLike, seeds: int | None = None) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"--grid: file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML ({err})") from None
    return parse_grid(data, str(path), seeds)


def validate_grid_keys(grid: Grid, config: Mapping | object) -> None:
    """Every key the grid sets must exist in the bundle's merged config (``key in ConfigParser``)."""
    keys = {grid.seed_key, *grid.axes, *(k for s in grid.strategies.values() for k in s)}
    bad = sorted(k for k in keys if k not in config)
    if bad:
        raise GridError(
            f"{grid.source}: key(s) {bad} are not in the bundle's config; a grid may only override "
            f"keys that exist (sections with '#', e.g. 'rebalance#method')"
        )


@dataclass
class Child:
    """One bundle run of the study."""

    overrides: dict
    strategy: str
    seed: int
    axes: dict = field(default_factory=dict)  # the other axes' values (not the strategy's, not the seed)

    @property
    def cell(self) -> str:
        """The strategy with its other axis values: what the seeds of a row in the report share."""
        return cell_name(self.strategy, self.axes)

    @property
    def name(self) -> str:
        """A file-safe name, unique in the grid."""
        short = hashlib.sha256(canonical(self.overrides).encode()).hexdigest()[:8]
        text = "-".join([self.strategy, *(_label(v) for v in self.axes.values()), f"seed{self.seed}"])
        return safe_key(text).replace(" ", "_").replace("/", "_")[:80] + f"-{short}"


def expand_grid(grid: Grid) -> list[Child]:
    """Strategies x product of axes x seeds, strategy overrides on top, duplicates dropped; ordered
    seed-major so that a study stopped half-way has every strategy on its first seeds."""
    strategies = grid.strategies or {None: {}}
    keys = list(grid.axes)
    cells, seen = [], set()
    for name, fixed in strategies.items():
        for values in itertools.product(*(grid.axes[k] for k in keys)):
            overrides = dict(zip(keys, values)) | fixed
            token = canonical(overrides)
            if token in seen:
                continue
            seen.add(token)
            label = name if name is not None else _label(overrides[grid.strategy_key])
            other = {k: overrides[k] for k in keys if k != grid.strategy_key and k not in fixed}
            cells.append((overrides, label, other))
    return [
        Child(overrides | {grid.seed_key: seed}, label, seed, other)
        for seed in grid.seeds
        for overrides, label, other in cells
    ]


def config_hash(config_contents: Sequence, overrides: Mapping) -> str:
    """What a child computes: the merged bundle configs (as parsed, so whitespace does not count) and
    its overrides. Output folders and the launcher are not part of it."""
    return content_sha({"configs": list(config_contents), "overrides": dict(overrides)})[:16]


__all__ = [
    "GRID_FIELDS",
    "SMOKE_OVERLAY",
    "Child",
    "Grid",
    "GridError",
    "canonical",
    "cell_name",
    "config_hash",
    "content_sha",
    "expand_grid",
    "load_grid",
    "parse_grid",
    "validate_grid_keys",
]
