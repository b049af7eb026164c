"""The rules medaug's imports keep, read from the source with ``ast`` (nothing is imported, so the
test takes about a second): no import circle; ``io``, ``transforms`` and ``models`` know nothing
of ``pipelines`` or ``cli``; the study stage knows its runs only through MLflow, not through the
oversampling or training code; no bundle config reaches past a stage's face; and no ``_private``
name is used outside the module that defines it.

An import counts wherever it stands (module level or inside a function: both run sooner or later),
except under ``if TYPE_CHECKING:``, which never runs. ``from pkg import sub`` depends on the module
``pkg.sub`` when there is one, else on ``pkg``. For circles, importing ``pkg.sub`` is not counted as
depending on ``pkg``'s ``__init__``, so a package face that re-exports its submodules makes no circle;
for what a layer loads it is (Python runs ``pkg/__init__.py`` first).
"""

import ast
import graphlib
import re
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "medaug"
# a config naming a module inside a stage, e.g. medaug.pipelines.train.rebalance.make_loss
PAST_A_FACE = re.compile(r"medaug\.pipelines\.[a-z_]+\.[a-z_]+\.")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(module: str) -> bool:
    return module in MODULES and MODULES[module].name == "__init__.py"


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def run_time_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``import from`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module
    package = module if is_package(module) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@cache
def tree_of(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), str(MODULES[module]))


def imports_in(module: str, tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """``(module imported, name taken from it or None, line)`` for each import of medaug in ``tree``,
    the source of ``module``."""
    found = []
    for node in run_time_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = absolute(module, node)
            for alias in node.names:
                if f"{origin}.{alias.name}" in MODULES:
                    found.append((f"{origin}.{alias.name}", None, node.lineno))
                else:
                    found.append((origin, alias.name, node.lineno))
    return [item for item in found if item[0] == "medaug" or item[0].startswith("medaug.")]


@cache
def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    return imports_in(module, tree_of(module))


def dependencies(module: str) -> set[str]:
    """The medaug modules ``module`` imports directly (a name missing from the tree fails loudly)."""
    deps = {imported for imported, _, _ in imports_of(module)}
    unknown = deps - MODULES.keys()
    assert not unknown, f"{module} imports modules that do not exist: {sorted(unknown)}"
    return deps


def packages_of(module: str) -> list[str]:
    """The packages Python runs the ``__init__`` of before ``module`` (``a``, ``a.b`` for ``a.b.c``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reached_from(roots: list[str]) -> dict[str, list[str]]:
    """Every module loaded by importing ``roots`` (the packages around each imported module
    included), with one import chain that loads it."""
    chains = {module: [module] for root in roots for module in (*packages_of(root), root)}
    queue = list(chains)
    while queue:
        module = queue.pop(0)
        for dep in sorted({p for d in dependencies(module) for p in (*packages_of(d), d)}):
            if dep not in chains:
                chains[dep] = [*chains[module], dep]
                queue.append(dep)
    return chains


def inside(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_checker_reads_every_kind_of_import():
    source = """
from typing import TYPE_CHECKING

import numpy
from medaug.pipelines.train import make_loss
from . import rebalance
from .mixing import MixUp

if TYPE_CHECKING:
    from medaug.cli import main


def later():
    import medaug.io.atomic
"""
    assert set(imports_in("medaug.pipelines.train.example", ast.parse(source))) == {
        ("medaug.pipelines.train", "make_loss", 5),  # a name from the package's face
        ("medaug.pipelines.train.rebalance", None, 6),  # a module taken from its package
        ("medaug.pipelines.train.mixing", "MixUp", 7),
        ("medaug.io.atomic", None, 14),  # inside a function: it runs when the function does
    }
    assert "medaug.pipelines.train.augmentation_grid" in dependencies("medaug.pipelines.train")
    assert len(MODULES) > 50 and all(m == "medaug" or m.startswith("medaug.") for m in MODULES)


def test_no_import_circle():
    graph = {module: dependencies(module) for module in MODULES}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail("import circle: " + " -> ".join(reversed(err.args[1])))


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("medaug.io", ("medaug.pipelines", "medaug.cli")),
        ("medaug.transforms", ("medaug.pipelines", "medaug.cli")),
        ("medaug.models", ("medaug.pipelines", "medaug.cli")),
        (
            "medaug.pipelines.study",
            ("medaug.pipelines.oversample", "medaug.pipelines.train", "medaug.models"),
        ),
        # the Docker entry point loads no training code (the subprocess test in
        # tests/pipelines/test_predict.py shows it at run time)
        ("medaug.pipelines.predict", ("medaug.pipelines.oversample", "medaug.pipelines.train", "medaug.models")),
    ],
)
def test_lower_layers_load_nothing_from_the_layers_above(layer, forbidden):
    roots = [m for m in MODULES if inside(m, layer)]
    chains = reached_from(roots)
    # each chain up to the first forbidden module it reaches: where the layer is crossed
    crossings = {
        " -> ".join(chain)
        for module, chain in chains.items()
        if inside(module, *forbidden) and not inside(chain[-2], *forbidden)
    }
    assert not crossings, f"{layer} loads what it must not ({', '.join(forbidden)}):\n" + "\n".join(sorted(crossings))


def bundle_configs() -> list[Path]:
    return sorted(p for p in (REPO / "bundles").rglob("*") if p.suffix in (".json", ".yaml", ".yml"))


def test_no_bundle_config_reaches_past_a_stage_face():
    assert bundle_configs(), "no bundle configs found"
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in bundle_configs()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PAST_A_FACE.search(line)
    ]
    assert not found, "configs that should name the stage's face (medaug.pipelines.<stage>.<name>):\n" + "\n".join(
        found
    )


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(module: str) -> list[str]:
    """``_private`` names ``module`` takes from other medaug modules: imported by name, or read as an
    attribute of an imported medaug module (``plots._figure``)."""
    found, aliases = [], {}
    for imported, name, line in imports_of(module):
        if name is not None and is_private(name):
            found.append(f"{module}:{line} imports {name} from {imported}")
        if any(is_private(part) for part in imported.split(".")):
            found.append(f"{module}:{line} imports the private module {imported}")
    tree = tree_of(module)
    for node in run_time_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            source = absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            aliases.update({alias.asname: alias.name for alias in node.names if alias.asname})
    for node in run_time_nodes(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and aliases.get(node.value.id, "").startswith("medaug")
            and aliases[node.value.id] != module
            and is_private(node.attr)
        ):
            found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_is_used_across_modules():
    found = [use for module in MODULES for use in private_uses(module)]
    assert not found, "make these public (or move them to where they are used):\n" + "\n".join(found)
