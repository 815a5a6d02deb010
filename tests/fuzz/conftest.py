"""Hypothesis profiles and helpers for the parser fuzz tests (tests/fuzz).

Profiles (pick with `pytest --hypothesis-profile=NAME`; "ci" is loaded by default):

* ci:   50 examples per test (the Hydra-config tests cap themselves lower, see
        test_fuzz_config.py), deadline 2 s per example, derandomize=True so CI runs are
        reproducible, no example database. The whole tests/fuzz suite runs in well under 90 s
        on a 2-core CPU machine.
* long: 2000 examples per test, deadline 10 s, random (not derandomized); `make fuzz`.

Besides the hypothesis deadline (which only reports a slow example after it has finished),
every parse runs under `time_limit()`, a SIGALRM guard that turns a hang into a test failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 50
LONG_EXAMPLES = 2000
_common = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture], database=None)
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=2000, derandomize=True, **_common)
settings.register_profile("long", max_examples=LONG_EXAMPLES, deadline=10000, derandomize=False, **_common)
# `--hypothesis-profile=long` is applied by hypothesis' pytest plugin before this file is loaded:
# keep it; otherwise (profile still "default") use ci
if settings.get_current_profile_name() == "default":
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PARSE_TIMEOUT_S = 10


class ParseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int = PARSE_TIMEOUT_S):
    """Fail (ParseTimeout, not a ValueError, so it is never mistaken for a clean rejection) when the
    body runs longer than `seconds`: a per-example hang guard."""
    def on_alarm(signum, frame):
        raise ParseTimeout(f"parse took longer than {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def listing(folder: Path) -> set[str]:
    """Every path under `folder` (relative), to check that a failed parse wrote nothing beside its input."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}
