"""rnnexp: experiment-tracking workflow for RNN image generators (PixelRNN)."""

__version__ = "0.1.0"
