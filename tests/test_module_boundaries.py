"""No module of the library, the experiments or the benchmarks uses
another module's underscore names; the experiments and benchmarks use
jaxprune's public API only."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("jaxprune", "experiments", "benchmarks")


def _modules():
  return sorted(p for package in PACKAGES for p in (ROOT / package).glob("*.py"))


def _own_modules() -> set[str]:
  """Dotted names of the project's modules (``jaxprune._pruning``)."""
  return {f"{p.parent.name}.{p.stem}" for p in _modules()} | set(PACKAGES)


def private_uses(path: pathlib.Path) -> list[str]:
  """``module._name`` uses in ``path`` where the module is another project
  module, as ``file:line: text``."""
  tree = ast.parse(path.read_text(), filename=str(path))
  own, this = _own_modules(), f"{path.parent.name}.{path.stem}"
  aliases: dict[str, str] = {}  # local name -> project module
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        if full in own:
          aliases[alias.asname or alias.name] = full
        elif node.module in own and node.module != this and alias.name.startswith("_"):
          found.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in own:
          aliases[alias.asname or alias.name] = alias.name
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and aliases[node.value.id] != this
        and node.attr.startswith("_") and not node.attr.startswith("__")):
      found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
  return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_module_uses_another_modules_private_names(path):
  assert private_uses(path) == []


@pytest.mark.parametrize("package", ["experiments", "benchmarks"])
def test_experiments_and_benchmarks_import_no_private_jaxprune_module(package):
  imported = []
  for path in sorted((ROOT / package).glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      imported += [f"{path.name}: {n}" for n in names
                   if n.startswith("jaxprune.") and n.split(".")[1].startswith("_")]
  assert imported == []


def test_the_check_finds_a_private_use(tmp_path):
  package = tmp_path / "jaxprune"
  package.mkdir()
  module = package / "_user.py"
  module.write_text(
      "from jaxprune import _pruning\n"
      "from jaxprune._flipout import _check_rate\n"
      "x = _pruning._plan_with\n"
      "y = _pruning.prune\n")
  assert private_uses(module) == [
      "_user.py:2: from jaxprune._flipout import _check_rate",
      "_user.py:3: _pruning._plan_with",
  ]


def test_no_module_shadows_a_standard_library_module():
  """A script run as ``python experiments/x.py`` puts its folder first on
  ``sys.path``: a module there named like one of the standard library's
  (``compression``, ``types``...) is imported in its place, by JAX too.
  (The library's own folder is never on ``sys.path``.)"""
  import sys

  stdlib = set(sys.stdlib_module_names) | {"compression"}  # 3.14's
  shadowing = [str(p.relative_to(ROOT)) for p in _modules()
               if p.parent.name != "jaxprune" and p.stem in stdlib]
  assert not shadowing, shadowing
