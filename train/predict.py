"""Moved to ``edg.train.io.predict`` (the public names are in ``edg.api``); this path goes in EDG 0.3."""
import importlib
import sys
import warnings

warnings.warn("`edg.train.predict` moved to `edg.train.io.predict` and goes in EDG 0.3; import from `edg.api`",
              FutureWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("edg.train.io.predict")
