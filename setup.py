"""Packaging: one import namespace, ``edg``, over the stage folders (see edg/__init__.py). An installed
wheel holds ``edg/`` with ``edg_core``, ``dft``, ``render``, ``train``, ``cluster`` and ``serve`` nested under
it, so no top-level ``train`` or ``cluster`` package reaches site-packages. A new subpackage needs no edit here."""
from setuptools import find_packages, setup

FOLDERS = ("edg_core", "dft", "render", "train", "cluster", "serve")

packages = ["edg"] + [f"edg.{folder}" for folder in FOLDERS]
packages += [f"edg.{folder}.{sub}" for folder in FOLDERS for sub in find_packages(folder)]
setup(packages=packages,
      package_dir={"edg": "edg", **{f"edg.{folder}": folder for folder in FOLDERS}},
      package_data={"edg.edg_core": ["data/*.extxyz", "data/*.md"], "edg.serve": ["page.html"]})
