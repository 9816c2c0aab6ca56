"""rnnexp: experiment-tracking workflow for RNN image generators (PixelRNN)."""

import os

__version__ = "0.1.0"

# MKL's Conditional Numerical Reproducibility, before torch's first MKL call (MKL reads
# the variable then). Without it MKL picks among code paths per process: the same
# training repeated in new processes came out up to 6e-8 apart in 4 of 40 processes on
# the 2-core VM, which broke "a resumed training equals an uninterrupted one"; with
# AUTO, 0 of 90 (benchmarks/RESULTS.md, Robustness). A value the user set wins.
os.environ.setdefault("MKL_CBWR", "AUTO")
