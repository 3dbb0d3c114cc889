"""A griffe extension that adapts jaxprune's docstrings to mkdocstrings.

The docstrings are Google style with two conventions that griffe reads
otherwise:

- ``Example:`` (singular) heads the doctest sections. griffe's Google parser
  knows only ``Examples:``, and would render the section as an admonition of
  Markdown text, where ``>>>`` lines are not code. The heading is renamed
  before parsing, so the doctests render as code.
- Cross-references are written as Sphinx roles (``:func:`prune```). The role
  is dropped, leaving the name as inline code.

Only the text that mkdocstrings renders changes; the source is untouched.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):(`[^`]+`)")


def adapt(text: str) -> str:
  """Returns ``text`` with ``Example:`` headings and Sphinx roles adapted.

  Example:
    >>> adapt("Sum.\\n\\n  Example:\\n    >>> 1 + 1\\n    2\\n")
    'Sum.\\n\\n  Examples:\\n    >>> 1 + 1\\n    2\\n'
    >>> adapt("See :func:`jaxprune.prune`.")
    'See `jaxprune.prune`.'
  """
  return _ROLE.sub(r"\1", _EXAMPLE.sub(r"\1Examples:", text))


class JaxpruneDocstrings(griffe.Extension):
  """Applies :func:`adapt` to every docstring once the package is loaded."""

  def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
    if obj.docstring is not None:
      obj.docstring.value = adapt(obj.docstring.value)
