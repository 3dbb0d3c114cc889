"""Checks a built wheel: the library only, and no heavy dependency.

Usage: python .ci/check_wheel.py DIST_DIR

The wheel must hold the ``jaxprune`` package and its metadata and nothing
else (no tests, experiments or benchmarks), and its unconditional
requirements must be jax, flax, optax and numpy: tensorflow-datasets,
orbax-checkpoint and the plotting stack belong to extras.
"""

import pathlib
import sys
import zipfile

LIBRARY_REQUIREMENTS = {"jax", "flax", "optax", "numpy"}


def main(dist_dir: str) -> int:
  wheels = sorted(pathlib.Path(dist_dir).glob("jaxprune-*.whl"))
  if len(wheels) != 1:
    print(f"error: expected one jaxprune wheel in {dist_dir}, found {wheels}")
    return 1
  with zipfile.ZipFile(wheels[0]) as wheel:
    names = wheel.namelist()
    metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = wheel.read(metadata_name).decode()
  strays = [n for n in names
            if not (n.startswith("jaxprune/") or ".dist-info/" in n)]
  if strays:
    print(f"error: the wheel holds files outside the library: {strays}")
    return 1
  required = set()
  for line in metadata.splitlines():
    if line.startswith("Requires-Dist:") and "extra ==" not in line:
      spec = line.split(":", 1)[1].strip()
      name = spec.split(";")[0]
      for stop in "<>=!~[ (":
        name = name.split(stop)[0]
      required.add(name.strip().lower())
  if required != LIBRARY_REQUIREMENTS:
    print(f"error: the wheel requires {sorted(required)}, "
          f"expected {sorted(LIBRARY_REQUIREMENTS)}")
    return 1
  print(f"{wheels[0].name}: {len(names)} files, requires {sorted(required)}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
