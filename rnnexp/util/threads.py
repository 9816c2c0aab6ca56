"""How many CPU threads torch uses in one stage's process.

Torch starts one intra-op thread per core in every process. That suits one
experiment at a time; N experiments run side by side (``dvc queue start -j N``)
would each start that many and fight over the cores: two evaluations on 2 cores
took 17 s with 2 threads each and 9 s with 1 thread each. ``train.threads`` and
``evaluate.threads`` set the count per stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the block with ``threads`` torch CPU threads (0: torch's default count).

    Yields the thread count in effect; the previous one is restored on exit, so a
    trial or test in the same process is not left with another's setting.

    The count is set even when it is torch's default: ``torch.set_num_threads`` also
    turns off MKL's dynamic thread adjustment (``MKL_DYNAMIC``), which torch leaves on
    until it is called. Intel lists a fixed thread count with MKL_DYNAMIC off, beside
    ``MKL_CBWR`` (set in :mod:`rnnexp`), as the conditions of run-to-run reproducible
    results; a resumed training must equal an uninterrupted one bit for bit.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
