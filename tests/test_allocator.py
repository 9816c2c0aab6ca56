"""The training stages run under tcmalloc where it is installed (rnnexp.util.allocator).

Each check starts its own process, since a process picks its allocator at start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rnnexp.util.allocator import SWITCH, find_tcmalloc

needs_tcmalloc = pytest.mark.skipif(
    find_tcmalloc() is None or sys.platform != "linux",
    reason="no tcmalloc (Debian: libtcmalloc-minimal4, which .ci/run installs)",
)

# What a stage's __main__ does first, then which allocator the process has.
CHILD = """
from rnnexp.util.allocator import allocator_in_use, rerun_under_tcmalloc
rerun_under_tcmalloc()
print(allocator_in_use())
"""


def allocator_of_child(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", SWITCH)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        check=True,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
    ).stdout
    return out.split()[-1]


@needs_tcmalloc
def test_a_stage_process_runs_again_under_tcmalloc():
    assert allocator_of_child() == "tcmalloc"


@needs_tcmalloc
def test_the_switch_keeps_the_system_allocator():
    assert allocator_of_child(**{SWITCH: "system"}) == "system"


def test_a_tcmalloc_that_cannot_be_preloaded_is_not_tried_again():
    # ld.so reports the missing library and goes on; the process must not re-run
    # itself in a loop, and ends normally with the system allocator.
    assert allocator_of_child(LD_PRELOAD="/nonexistent/libtcmalloc_minimal.so.4") == "system"
