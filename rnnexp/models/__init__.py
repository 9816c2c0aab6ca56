"""PixelRNN generators as plain ``torch.nn`` modules (no Lightning/MLflow/Optuna/DVC)."""

from rnnexp.models.conditioning import Conditioning, SourceEncoder
from rnnexp.models.diagonal import DiagonalBiLSTM, DiagonalLSTM, diagonal_order
from rnnexp.models.generator import (
    ARCHS,
    GeneratorConfig,
    PixelRNN,
    count_parameters,
    matched_hidden,
)
from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.pixelcnn import PixelCNNBlock
from rnnexp.models.row_lstm import RowLSTM
from rnnexp.models.sampling import sample_naive

__all__ = [
    "ARCHS",
    "Conditioning",
    "DiagonalBiLSTM",
    "DiagonalLSTM",
    "GeneratorConfig",
    "MaskedConv2d",
    "PixelCNNBlock",
    "PixelRNN",
    "RowLSTM",
    "SourceEncoder",
    "count_parameters",
    "matched_hidden",
    "diagonal_order",
    "sample_naive",
]
