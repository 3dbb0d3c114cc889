"""Files written whole or not at all.

A run can be killed at any moment (preemption, SIGKILL); a file it was
rewriting must then hold either its old contents or its new ones, never a
part.  The new contents go to a temporary file beside the target, which is
then renamed over it: ``os.replace`` is atomic on POSIX file systems.

Example:
  >>> import pathlib, tempfile
  >>> from experiments import files
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "summary.json"
  >>> files.write_text_atomically(path, '{"step": 1}\\n')
  >>> path.read_text()
  '{"step": 1}\\n'
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[BinaryIO]:
  """A binary file whose contents replace ``path``'s when the block ends
  without an exception; on an exception ``path`` is left as it was."""
  path = pathlib.Path(path)
  temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(temporary, "wb") as f:
      yield f
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
  """Replaces ``path``'s contents with ``text`` (UTF-8), atomically."""
  with replaced_atomically(path) as f:
    f.write(text.encode())
