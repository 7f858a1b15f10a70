"""Shared by the property, bad-input and fault tests: the hypothesis example budget per test and the
counts behind the README's "Reliability" figures.

Profiles (registered in conftest.py, chosen by HYPOTHESIS_PROFILE): "ci" (the default) runs a
bounded, derandomized set of examples, the same on every run, so that a failure reproduces; "long"
runs ``LONG_FACTOR`` times as many random ones and keeps failing examples in tests/hypothesis-examples/,
from which its next run replays them first.
"""
from __future__ import annotations

import functools
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from hypothesis import settings

LONG_FACTOR = 20
COUNTS: dict[str, Counter] = defaultdict(Counter)
# Set by the run that writes benchmarks/results/cpu/reliability.json (see the README's section).
REPORT_ENV = "UNET_FAST_RELIABILITY_JSON"


def examples(ci: int) -> settings:
    """Settings for a property test worth ``ci`` examples in the CI profile (more in "long")."""
    factor = LONG_FACTOR if settings.get_current_profile_name() == "long" else 1
    return settings(max_examples=ci * factor)


def count(kind: str, name: str, n: int = 1) -> None:
    """Counts ``n`` events of ``kind`` ("examples", "bad_inputs", "faults") for ``name`` (an op, a fault)."""
    COUNTS[kind][name] += n


def counted(name: str):
    """Decorator for a property test's body: each example it runs counts for op ``name``."""
    def wrap(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            count("examples", name)
            return test(*args, **kwargs)
        return run
    return wrap


def write_report(path: str | os.PathLike, extra: dict) -> None:
    data = {kind: dict(sorted(c.items())) for kind, c in sorted(COUNTS.items())}
    data["totals"] = {kind: sum(c.values()) for kind, c in sorted(COUNTS.items())}
    data.update(extra)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
