"""Packages are found, not listed: a hand-written list once left two out and broke
every installed copy. ``daemon/`` installs as ``galtea_local_daemon`` (PyPI's
python-daemon owns the top-level name ``daemon``), which pyproject.toml's static
``find`` cannot rename, hence this file. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

DAEMON = ["galtea_local_daemon"] + [f"galtea_local_daemon.{name}" for name in find_packages("daemon")]

setup(packages=find_packages(include=["galtea_local", "galtea_local.*"]) + DAEMON)
