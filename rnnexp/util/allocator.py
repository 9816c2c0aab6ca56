"""Run the training stages under tcmalloc where it is installed.

Why: torch takes every CPU tensor from ``malloc``. glibc's malloc hands a large
block (over its mmap threshold, at most 32 MB) fresh from the kernel and returns it
on ``free``, so each training step page-faults and zero-fills its large activation
maps again, and its heap fragments. tcmalloc keeps freed blocks for reuse within a
bounded cache. On the 2-core VM, 2 threads, 28x28 images, batch 64
(benchmarks/RESULTS.md, "tcmalloc"): 1.15x the Row LSTM's images/s with 1.3 against
1.5 GB peak memory, 1.33x the Diagonal BiLSTM's with 1.3 against 2.1 GB. Over 40
steps its resident memory stayed flat. Intel's PyTorch CPU tuning guide gives the
same advice.

How: a process picks its allocator when it starts (``LD_PRELOAD``), so the train
and tune stages, before they import torch, run themselves again once with tcmalloc
preloaded (:func:`rerun_under_tcmalloc`). Where tcmalloc is not installed (Debian:
``libtcmalloc-minimal4``), on other systems, or with ``RNNEXP_ALLOCATOR=system``,
they run as they are. The runs are tagged with the allocator in use
(:func:`allocator_in_use`), since their timings depend on it.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

# Set to "system" to keep the C library's malloc.
SWITCH = "RNNEXP_ALLOCATOR"
# tcmalloc's shared libraries, the minimal one (no heap profiler) first.
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")


def find_tcmalloc() -> str | None:
    """The file name of an installed tcmalloc library (``ldconfig``'s), or None."""
    for name in LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_for_training() -> str | None:
    """The tcmalloc library the training stages preload here, or None: not on Linux,
    switched off (``RNNEXP_ALLOCATOR=system``), or not installed."""
    if sys.platform != "linux" or os.environ.get(SWITCH, "") == "system":
        return None
    return find_tcmalloc()


def allocator_in_use() -> str:
    """``tcmalloc`` if this process has tcmalloc loaded, else ``system``."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return "tcmalloc" if any("libtcmalloc" in line for line in maps) else "system"
    except OSError:  # no /proc (macOS): nothing preloads tcmalloc there either
        return "system"


def rerun_under_tcmalloc() -> None:
    """Replace this process by the same command with tcmalloc preloaded, if it can be.

    Call it first thing in a stage's ``__main__``, before torch loads: the command
    runs again from the start. It returns (and nothing changes) on a system other
    than Linux, with ``RNNEXP_ALLOCATOR=system``, where no tcmalloc is installed, or
    where ``LD_PRELOAD`` names one already: then this process is the re-run, or
    tcmalloc could not be preloaded, and a second try would not do better.
    """
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return
    library = tcmalloc_for_training()
    if library is None:
        return
    env = {**os.environ, "LD_PRELOAD": f"{library} {preload}".strip()}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
