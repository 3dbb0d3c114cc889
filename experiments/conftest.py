"""The example scripts run as scripts, in tests/test_readme.py and
tests/test_docs.py; doctest collection must not import (and so run) them."""

collect_ignore_glob = ["quickstart*.py"]
