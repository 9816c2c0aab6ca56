"""PixelRNN generators as plain ``torch.nn`` modules (no Lightning/MLflow/Optuna/DVC)."""

from rnnexp.models.generator import ARCHS, GeneratorConfig, PixelRNN
from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.row_lstm import RowLSTM
from rnnexp.models.sampling import sample_naive

__all__ = ["ARCHS", "GeneratorConfig", "MaskedConv2d", "PixelRNN", "RowLSTM", "sample_naive"]
