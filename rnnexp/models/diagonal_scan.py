"""The recurrence of the Diagonal BiLSTM (:mod:`rnnexp.models.diagonal`), diagonal by diagonal.

:func:`diagonal_scan` runs ``D`` LSTMs (the layer's two directions) over an image
whose pixels are listed diagonal after diagonal
(:func:`diagonal_order`): each step updates the pixels of
one diagonal, its *band*, from the band before it. The forward and the backward are
written by hand (:class:`_DiagonalScan`); ``tests/test_lstm_cell.py`` checks them
against a pixel loop and ``gradcheck``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=32)
def diagonal_order(height: int, width: int) -> tuple[Tensor, tuple[int, ...], Tensor, Tensor]:
    """The pixels of an ``H x W`` image listed diagonal after diagonal.

    Diagonal ``t`` (``0 <= t < W + H - 1``) holds the pixels ``(i, t - i)`` with
    ``max(0, t - W + 1) <= i <= min(t, H - 1)``, top to bottom (its *band*).

    Returns:
        ``(order, sizes, above, left)``: ``order[k]`` is the raster index ``i * W + j``
        of the ``k``-th pixel in diagonal order; ``sizes[t]`` is the length of diagonal
        ``t``; ``above[k]`` and ``left[k]`` are the diagonal-order positions of that
        pixel's upper and left neighbours, ``H*W`` where there is none. CPU tensors,
        cached per shape.
    """
    order, sizes = [], []
    for t in range(width + height - 1):
        rows = range(max(0, t - width + 1), min(t, height - 1) + 1)
        order += [i * width + (t - i) for i in rows]
        sizes.append(len(rows))
    position = {pixel: k for k, pixel in enumerate(order)}
    none = height * width
    above = [position.get(p - width, none) if p >= width else none for p in order]
    left = [position.get(p - 1, none) if p % width else none for p in order]
    as_tensor = functools.partial(torch.tensor, dtype=torch.long)
    return as_tensor(order), tuple(sizes), as_tensor(above), as_tensor(left)


def _bands(sizes: tuple[int, ...], height: int):
    """For each diagonal ``t``: its start, length ``n``, ``up`` and ``left`` links.

    Row ``i`` of diagonal ``t`` reads rows ``i - 1`` (above) and ``i`` (left) of
    diagonal ``t - 1``; rows outside the image are zero. With ``top = t < W`` (the
    band starts at row 0, so its first row has nothing above) and ``grow = t < H``
    (the band gained a bottom row, which has nothing to its left), and positions
    counted within each band:

    - ``up``: rows ``top .. n-1`` read rows ``0 .. n-1-top`` of the previous band;
    - ``left``: rows ``0 .. n-1-grow`` read rows ``1-top .. n-top-grow`` of it (the
      cell state ``c`` follows the same link).
    """
    width = len(sizes) - height + 1
    start, prev = 0, 0
    for t, n in enumerate(sizes):
        top, grow = int(t < width), int(t < height)
        up = (slice(top, n), slice(0, n - top))  # (this band's rows, previous band's rows)
        left = (slice(0, n - grow), slice(1 - top, 1 - top + n - grow))
        yield start, prev, n, up, left
        prev, start = start, start + n


def _tanh_from_sigmoid_(s: Tensor) -> Tensor:
    """``tanh(y)`` from ``s = sigmoid(2 y)``, in place: ``2 s - 1``.

    Why: on the CPU build here (AVX2) ``torch.tanh`` took 3.5x as long as
    ``torch.sigmoid`` on the scan's maps, and the scan's tanh was a sixth of its time.
    The identity is exact; in float32 the two differ by at most 2e-7.
    """
    return s.mul_(2).sub_(1)


class _DiagonalScan(torch.autograd.Function):
    """The recurrence of :func:`diagonal_scan`, with a hand-written backward.

    Why: run by autograd, each of the ``W + H - 1`` diagonals costs a dozen graph
    nodes, pads and concatenations, and every diagonal's weight gradient is its own
    small matrix product. Here the forward writes each band's results into
    preallocated maps, the backward walks the bands in reverse writing the gate
    gradients in place, and the weight gradient is one matrix product per tap over
    the whole map (each pixel's upper and left neighbours gathered by index).
    Every element-wise step is one call on a whole band, in place where it can be
    (the scan's element-wise work was a third of a Diagonal BiLSTM training step).
    ``tests/test_lstm_cell.py`` checks it against a pixel loop and ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, gates: Tensor, weight: Tensor, sizes: tuple[int, ...], height: int):
        d, total, b, four_h = gates.shape
        hidden = four_h // 4
        # The pre-activations, turned into the activations in place: sigmoid(i, f, o)
        # and tanh(g). The candidate g is kept doubled, in the gates and in its
        # state-to-state columns, so that one sigmoid call covers all four gates
        # (tanh(g) = 2 sigmoid(2 g) - 1).
        doubled = slice(3 * hidden, four_h)
        acts = gates.clone()  # (D, H*W, B, 4h)
        acts[..., doubled] *= 2
        w_doubled = weight.clone()  # (D, 2, h, 4h)
        w_doubled[..., doubled] *= 2
        hs = gates.new_empty(d, total, b, hidden)  # returned; not kept for the backward
        cs = gates.new_empty(d, total, b, hidden)  # each pixel's cell state
        tanh_cs = gates.new_empty(d, total, b, hidden)  # and its tanh
        for start, prev, n, up, left in _bands(sizes, height):
            here, before = slice(start, start + n), slice(prev, start)
            pre = acts[:, here]  # (D, n, B, 4h)
            if start:
                h_prev = hs[:, before]  # (D, n', B, h)
                for (rows, prev_rows), w in ((up, w_doubled[:, 0]), (left, w_doubled[:, 1])):
                    pre[:, rows].view(d, -1, four_h).baddbmm_(
                        h_prev[:, prev_rows].reshape(d, -1, hidden), w
                    )
            pre.sigmoid_()
            a = pre.view(d, n, b, 4, hidden)
            _tanh_from_sigmoid_(a[..., 3, :])  # tanh(g), from sigmoid(2 g)
            c = cs[:, here]
            torch.mul(a[..., 0, :], a[..., 3, :], out=c)  # i * g
            if start:  # + f * the left neighbour's cell state (zero outside the image)
                c[:, left[0]].addcmul_(a[:, left[0], :, 1], cs[:, before][:, left[1]])
            tanh_c = _tanh_from_sigmoid_(torch.mul(c, 2, out=tanh_cs[:, here]).sigmoid_())
            torch.mul(a[..., 2, :], tanh_c, out=hs[:, here])
        # Kept for the backward: the activated gates, the cell states and their tanh,
        # 6h numbers a pixel; the hidden states are recomputed from them there.
        ctx.save_for_backward(weight, acts, cs, tanh_cs)
        ctx.sizes, ctx.height = sizes, height
        return hs

    @staticmethod
    def backward(ctx, grad_hs: Tensor):
        weight, acts, cs, tanh_cs = ctx.saved_tensors
        sizes, height = ctx.sizes, ctx.height
        d, total, b, hidden = cs.shape
        acts = acts.view(d, total, b, 4, hidden)
        one = cs.new_ones(())  # for 1 - x * x in one call: addcmul(one, x, x, value=-1)
        grad_gates = cs.new_empty(d, total, b, 4, hidden)
        w_t = weight.transpose(2, 3)  # (D, 2, 4h, h)
        dh = dc = None  # this band's gradients of h and c, with what later bands sent back
        for start, prev, n, up, left in reversed(list(_bands(sizes, height))):
            here, before = slice(start, start + n), slice(prev, start)
            a, tanh_c = acts[:, here], tanh_cs[:, here]
            i, f, o, g = a.unbind(3)  # (D, n, B, h) each
            if dh is None:  # the last diagonal: nothing comes back from later ones
                dh = grad_hs[:, here]
            # dL/dc, from c itself and through h = o * tanh(c)
            dtanh_c = torch.addcmul(one, tanh_c, tanh_c, value=-1)
            if dc is None:
                dc = torch.mul(dh, o).mul_(dtanh_c)
            else:
                dc.addcmul_(dh * o, dtanh_c)
            gg = grad_gates[:, here]  # (D, n, B, 4, h)
            torch.mul(dc, g, out=gg[..., 0, :])
            # f's gradient: dc * the incoming cell state, the left neighbour's (zero
            # for a pixel in column 0: band 0, and the bottom row of a growing band).
            if start:
                torch.mul(dc[:, left[0]], cs[:, before][:, left[1]], out=gg[:, left[0], :, 1])
                gg[:, left[0].stop :, :, 1].zero_()
            else:
                gg[..., 1, :].zero_()
            torch.mul(dh, tanh_c, out=gg[..., 2, :])
            sig = a[..., :3, :]
            gg[..., :3, :] *= torch.addcmul(sig, sig, sig, value=-1)  # sigmoid'
            torch.mul(dc, i, out=gg[..., 3, :]).mul_(torch.addcmul(one, g, g, value=-1))
            if not start:
                break
            # What this band sends back to the one before it.
            dh = grad_hs[:, before].clone()  # (D, n', B, h)
            gpre = gg.view(d, n, b, 4 * hidden)
            for (rows, prev_rows), w in ((up, w_t[:, 0]), (left, w_t[:, 1])):
                dh[:, prev_rows].view(d, -1, hidden).baddbmm_(
                    gpre[:, rows].reshape(d, -1, 4 * hidden), w
                )
            dc_prev = cs.new_zeros(d, start - prev, b, hidden)
            torch.mul(dc[:, left[0]], f[:, left[0]], out=dc_prev[:, left[1]])
            dc = dc_prev
        # Weight gradients over the whole map: each pixel's neighbour states x its gates.
        _, _, above, left_of = diagonal_order(height, len(sizes) - height + 1)
        padded = cs.new_zeros(d, total + 1, b, hidden)  # the hidden states; row H*W: zeros
        torch.mul(acts[:, :, :, 2], tanh_cs, out=padded[:, :total])  # o * tanh(c)
        flat_grad = grad_gates.view(d, total * b, 4 * hidden)
        grad_w = torch.stack(
            [
                torch.bmm(
                    padded.index_select(1, idx.to(cs.device)).view(d, -1, hidden).transpose(1, 2),
                    flat_grad,
                )
                for idx in (above, left_of)
            ],
            dim=1,
        )  # (D, 2, h, 4h)
        return grad_gates.view(d, total, b, 4 * hidden), grad_w, None, None


def diagonal_scan(gates: Tensor, weight: Tensor, sizes: tuple[int, ...], height: int) -> Tensor:
    """Run ``D`` diagonal LSTMs, diagonal by diagonal; their hidden states.

    Args:
        gates: input-to-state gate pre-activations with every bias in them,
            ``(D, H*W, B, 4h)``, pixels in diagonal order (:func:`diagonal_order`).
        weight: state-to-state weights ``(D, 2, h, 4h)``: tap 0 multiplies the state of
            the pixel above, tap 1 that of the pixel to the left.
        sizes: the lengths of the diagonals (:func:`diagonal_order`).
        height: the image height ``H`` (the width is ``len(sizes) - H + 1``).

    Returns:
        The hidden states ``(D, H*W, B, h)``, pixels in diagonal order. The state of
        a pixel outside the image is zero; the cell update is
        :func:`~rnnexp.models.lstm_cell.lstm_cell`'s.
    """
    # At least float32, with autocast off: the scan writes products into buffers in
    # place, which autocast (bf16-mixed, 16-mixed) would cast to another dtype.
    dtype = torch.promote_types(gates.dtype, torch.float32)
    with torch.autocast(gates.device.type, enabled=False):
        return _DiagonalScan.apply(gates.to(dtype).contiguous(), weight.to(dtype), sizes, height)
