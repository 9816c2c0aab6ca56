"""The LSTM cell update shared by the Row LSTM and the Diagonal BiLSTM (section 3.1).

``c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g)``, ``h = sigmoid(o) * tanh(c)``, on
gate pre-activations in the layout ``[i|f|o|g]``.

Why a hand-written backward (:class:`_FusedLSTMCell`): the recurrences call the cell
once per row (Row LSTM) or per diagonal (Diagonal BiLSTM), on small maps, so a
training step runs it hundreds of times. Left to autograd, the nine element-wise
ops of the update are nine graph nodes, each saving its inputs; the backward then
runs nine small kernels plus the ``cat`` that undoes the gate ``chunk``. Here the
three sigmoid gates are one call, the graph has one node that saves four tensors
(the activated gates, ``c_prev`` and ``tanh(c)``), and the backward writes the four
gates' gradients in one go. Plain PyTorch ops throughout, so it runs
on any device and dtype; ``tests/test_lstm_cell.py`` checks it against autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _FusedLSTMCell(torch.autograd.Function):
    """``(gates (P, 4, Q), c_prev (P, Q)) -> (h, c)``, each ``(P, Q)``.

    ``P`` and ``Q`` are whatever the caller's layout puts before and after the gate
    dimension (for example batch, and hidden x width).
    """

    @staticmethod
    def forward(ctx, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        sig = gates[:, :3].sigmoid()  # (N, 3, h, L): i, f, o
        g = gates[:, 3].tanh()  # (N, h, L)
        c = torch.addcmul(sig[:, 1] * c_prev, sig[:, 0], g)
        tanh_c = c.tanh()
        h = sig[:, 2] * tanh_c
        ctx.save_for_backward(sig, g, c_prev, tanh_c)
        return h, c

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor, Tensor]:
        sig, g, c_prev, tanh_c = ctx.saved_tensors
        i, f = sig[:, 0], sig[:, 1]
        # dL/dc: from c itself and through h = o * tanh(c)
        grad_c = torch.addcmul(grad_c, grad_h * sig[:, 2], 1 - tanh_c * tanh_c)
        # No out= or in-place writes: the backward must also run batched (vmap, as in
        # torch.autograd.functional.jacobian(..., vectorize=True)).
        grad_sig = torch.stack((grad_c * g, grad_c * c_prev, grad_h * tanh_c), 1)  # i, f, o
        grad_g = (grad_c * i * (1 - g * g)).unsqueeze(1)  # through the tanh
        grad = torch.cat((grad_sig * sig * (1 - sig), grad_g), 1)  # (P, 4, Q)
        return grad, grad_c * f


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell update on gates ``(P, 4, Q)`` (layout ``[i|f|o|g]`` on dim 1).

    Returns ``(h, c)``, each ``(P, Q)`` like ``c_prev``. Any layout that can be viewed
    so works: ``(B, 4h, W)`` as ``(B, 4, h*W)``, ``(N, 4h)`` as ``(N, 4, h)``.
    """
    return _FusedLSTMCell.apply(gates, c_prev)


def lstm_update(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell update, gates on dim 1.

    Args:
        gates: pre-activations ``(B, 4h, ...)`` in the layout ``[i|f|o|g]``; each gate
            is split into ``C`` contiguous colour groups like the hidden state.
        c_prev: previous cell state ``(B, h, ...)``.

    Returns:
        ``(h, c)``, each shaped like ``c_prev``: ``c = sigmoid(f) * c_prev +
        sigmoid(i) * tanh(g)``, ``h = sigmoid(o) * tanh(c)``. Element-wise, so it keeps
        the colour groups.
    """
    n = c_prev.shape[0]
    h, c = lstm_cell(gates.reshape(n, 4, -1), c_prev.reshape(n, -1))  # (B, h*L) each
    return h.view(c_prev.shape), c.view(c_prev.shape)


__all__ = ["lstm_cell", "lstm_update"]
