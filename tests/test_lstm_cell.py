"""The fused LSTM cell and the diagonal scan equal their plain-autograd definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnexp.models.diagonal import diagonal_order, diagonal_scan
from rnnexp.models.lstm_cell import lstm_update


def plain_lstm_update(gates, c_prev):
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.parametrize("shape", [(3, 8), (3, 8, 5), (2, 12, 3, 4)])
def test_fused_cell_equals_the_plain_update_and_its_gradient(shape):
    torch.manual_seed(0)
    gates = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    c_prev = torch.randn(
        shape[0], shape[1] // 4, *shape[2:], dtype=torch.double, requires_grad=True
    )
    h, c = lstm_update(gates, c_prev)
    h_ref, c_ref = plain_lstm_update(gates, c_prev)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    # Both outputs feed the loss, as in a recurrence (h to the next step and the
    # output, c to the next step).
    weights = torch.randn_like(h), torch.randn_like(c)
    grads = torch.autograd.grad((h * weights[0]).sum() + (c * weights[1]).sum(), (gates, c_prev))
    grads_ref = torch.autograd.grad(
        (h_ref * weights[0]).sum() + (c_ref * weights[1]).sum(), (gates, c_prev)
    )
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lstm_update, (gates, c_prev))


def plain_scan(gates, weight, height, width):
    """Pixel by pixel in diagonal order: state from above and from the left, zero outside."""
    order, _, _, _ = diagonal_order(height, width)
    d, _, b, four_h = gates.shape
    hidden = four_h // 4
    zero = gates.new_zeros(b, hidden)
    out = []
    for k_dir in range(d):
        hs, cs, col = {}, {}, []
        for k, p in enumerate(order.tolist()):
            i, j = divmod(p, width)
            up, side = hs.get((i - 1, j), zero), hs.get((i, j - 1), zero)
            pre = gates[k_dir, k] + up @ weight[k_dir, 0] + side @ weight[k_dir, 1]
            h, c = plain_lstm_update(pre, cs.get((i, j - 1), zero))
            hs[i, j], cs[i, j] = h, c
            col.append(h)
        out.append(torch.stack(col))
    return torch.stack(out)  # (D, H*W, B, h)


@pytest.mark.parametrize("height, width", [(3, 4), (4, 2), (1, 3), (3, 1), (2, 2)])
def test_diagonal_scan_equals_the_pixel_loop_and_its_gradient(height, width):
    torch.manual_seed(1)
    d, b, hidden = 2, 2, 3
    gates = torch.randn(d, height * width, b, 4 * hidden, dtype=torch.double, requires_grad=True)
    weight = (0.5 * torch.randn(d, 2, hidden, 4 * hidden, dtype=torch.double)).requires_grad_()
    _, sizes, _, _ = diagonal_order(height, width)
    hs = diagonal_scan(gates, weight, sizes, height)
    torch.testing.assert_close(hs, plain_scan(gates, weight, height, width))
    target = torch.randn_like(hs)
    got = torch.autograd.grad(F.mse_loss(hs, target), (gates, weight))
    want = torch.autograd.grad(
        F.mse_loss(plain_scan(gates, weight, height, width), target), (gates, weight)
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert torch.autograd.gradcheck(
        lambda g, w: diagonal_scan(g, w, sizes, height), (gates, weight)
    )
