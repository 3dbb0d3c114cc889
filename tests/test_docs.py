"""The documentation site: its code runs, its API reference is complete, it builds.

Every ```python block of a page under docs/ runs, the blocks of one page in
order in one fresh module namespace; other fences (```bash, ```text) are not
run. The API reference names every public name with a ``::: jaxprune.NAME``
entry, and ``mkdocs build --strict`` renders each of them without warnings.
"""

import doctest
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

import jaxprune
from jaxprune import criteria
from jaxprune import export
from jaxprune import projections
from jaxprune import schedules
from jaxprune import scores
from jaxprune import sharing
from jaxprune import structures

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_DOCS = _ROOT / "docs"
_PAGES = sorted(_DOCS.rglob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```\s*$", flags=re.DOTALL | re.MULTILINE)


def _blocks(page):
  return _BLOCK.findall(page.read_text())


def _name(page):
  return page.relative_to(_DOCS).as_posix()


def _public_names():
  """Every name the API reference must document, as ``jaxprune.NAME``."""
  names = {f"jaxprune.{name}" for name in jaxprune.__all__
           if not inspect.ismodule(getattr(jaxprune, name))}
  for module in (criteria, schedules, scores, projections, structures, export,
                 sharing):
    public = set(getattr(module, "__all__", ()))
    public |= {
        name for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    }
    names |= {f"{module.__name__}.{name}" for name in public}
  return names


def _reference_entries():
  pages = [_DOCS / "api.md", *sorted((_DOCS / "api").glob("*.md"))]
  text = "\n".join(p.read_text() for p in pages if p.exists())
  return set(re.findall(r"^::: *(\S+)", text, flags=re.MULTILINE))


def test_pages_are_found():
  names = {_name(p) for p in _PAGES}
  assert {"index.md", "getting-started.md", "results.md", "api.md"} <= names
  assert sum(len(_blocks(p)) for p in _PAGES) > 10


@pytest.mark.parametrize(
    "page", [p for p in _PAGES if _blocks(p)], ids=_name
)
def test_python_blocks_run_in_order(page):
  module = types.ModuleType(f"docs_page_{_name(page).replace('/', '_')[:-3]}")
  sys.modules[module.__name__] = module  # for dataclasses and Flax modules
  try:
    for i, block in enumerate(_blocks(page)):
      code = compile(block, f"{_name(page)} (block {i + 1})", "exec")
      exec(code, module.__dict__)  # noqa: S102
  finally:
    del sys.modules[module.__name__]


def test_sharding_page_runs_on_8_devices():
  code = "\n".join(_blocks(_DOCS / "guides" / "sharding.md"))
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=8").strip()
  code = "import jax\nassert jax.device_count() == 8\n" + code
  subprocess.run([sys.executable, "-c", code], cwd=_ROOT, env=env,
                 capture_output=True, text=True, timeout=300, check=True)


def test_api_reference_names_every_public_name():
  missing = _public_names() - _reference_entries()
  assert not missing, f"no '::: NAME' entry in docs/api.md for {sorted(missing)}"


def test_api_reference_entries_exist():
  for entry in _reference_entries():
    parent, _, attr = entry.rpartition(".")
    module = sys.modules.get(entry) or sys.modules[parent]
    assert module is sys.modules.get(entry) or hasattr(module, attr), entry


def test_griffe_extension_doctests():
  path = _DOCS / "griffe_jaxprune.py"
  spec = importlib.util.spec_from_file_location("griffe_jaxprune", path)
  pytest.importorskip("griffe")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  result = doctest.testmod(module)
  assert result.attempted > 0 and result.failed == 0


def test_mkdocs_build_is_strict_and_renders_every_name(tmp_path):
  pytest.importorskip("mkdocs")
  pytest.importorskip("mkdocstrings")
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
       str(tmp_path)],
      cwd=_ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner
  )
  assert result.returncode == 0, result.stderr
  assert "WARNING -" not in result.stderr, result.stderr
  api = (tmp_path / "api" / "index.html").read_text()
  missing = {n for n in _public_names() if f'id="{n}"' not in api}
  assert not missing, f"not rendered in the API reference: {sorted(missing)}"
