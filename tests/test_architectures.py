"""Tests of the three layer types (Row LSTM, Diagonal BiLSTM, PixelCNN) and conditioning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_models import dependence, raster, without_dead_units

import rnnexp.models.diagonal as diagonal
from rnnexp.models import (
    ARCHS,
    DiagonalBiLSTM,
    GeneratorConfig,
    PixelCNNBlock,
    PixelRNN,
    RowLSTM,
    count_parameters,
    diagonal_order,
    matched_hidden,
    sample_naive,
)

CONDITIONS = ("unconditional", "class", "source")


def arch_config(arch: str, channels: int = 1, condition: str = "unconditional", **overrides):
    hidden = 6 if channels == 3 else 8
    d = dict(
        arch=arch,
        channels=channels,
        levels=4,
        hidden=hidden,
        layers=2,
        kernel=3,
        head_hidden=2 * hidden,
        num_classes=3 if condition == "class" else 0,
        source_channels=2 if condition == "source" else 0,
    )
    d.update(overrides)
    return GeneratorConfig(**d)


def arch_model(arch: str, channels: int = 1, condition: str = "unconditional", seed=0, **kw):
    torch.manual_seed(seed)
    return PixelRNN(arch_config(arch, channels, condition, **kw))


def strictly_earlier(h: int, w: int, c: int) -> torch.Tensor:
    """(N, N) bool, N = H*W*C in raster order: True where column comes before row."""
    n = h * w * c
    return torch.ones(n, n, dtype=torch.bool).tril(diagonal=-1)


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_is_causal_and_sees_the_past(arch, channels, condition):
    h, w, c = 4, 5, channels
    model = arch_model(arch, channels, condition).double()
    # Leaky ReLUs keep the wiring and make every structural path visible, so both
    # the leak check and the "sees the past" checks below are about the wiring.
    without_dead_units(model)
    # The source image is given at half resolution (upscaling): it is resized inside.
    dep = dependence(model, h, w, source_size=(2, 3))
    assert not dep[~strictly_earlier(h, w, c)].any(), (
        "a logit depends on its own or a later (pixel, channel)"
    )
    for i in range(h):
        for j in range(w):
            for ch in range(c):
                out = raster(i, j, ch, w, c)
                for earlier in range(ch):  # earlier colours of the same pixel (R -> G -> B)
                    assert dep[out, raster(i, j, earlier, w, c)]
                if j > 0:  # left neighbour, every colour
                    assert dep[out, raster(i, j - 1, c - 1, w, c)]
                    assert dep[out, raster(i, j - 1, 0, w, c)]
                if i > 0:  # upper neighbours, including above-right
                    assert dep[out, raster(i - 1, j, c - 1, w, c)]
                    assert dep[out, raster(i - 1, min(j + 1, w - 1), 0, w, c)]
    if arch == "diagonal_bilstm":
        # Section 3.2: the layers see the whole past. Behind the mask-A input conv the
        # one exception is the last sub-pixel of the row above: no position of its own
        # row holds it, and the next row's features hold it only within the input
        # conv's reach (k // 2 columns) of the row's end.
        missing = torch.zeros_like(dep)
        reach = model.config.input_kernel // 2
        for i in range(1, h):
            for j in range(w - 1 - reach):
                for ch in range(c):
                    missing[raster(i, j, ch, w, c), raster(i - 1, w - 1, c - 1, w, c)] = True
        assert missing.any()  # the exception exists at this size (h=4, w=5, k=7) ...
        assert dep.equal(strictly_earlier(h, w, c) & ~missing)  # ... and is the only one
    elif arch == "row_lstm":
        # Section 3.1: a triangle; the last row's first pixel misses the row above's end.
        assert not dep[raster(h - 1, 0, 0, w, c), raster(h - 2, w - 1, 0, w, c)]


# --------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_labels_change_the_logits_everywhere(arch, channels):
    model = arch_model(arch, channels, "class", hidden=4 * channels, head_hidden=4 * channels)
    torch.manual_seed(2)
    x = torch.randint(0, 4, (3, channels, 4, 5))
    with torch.no_grad():
        a = model(x, labels=torch.tensor([0, 1, 2]))
        b = model(x, labels=torch.tensor([1, 2, 0]))
        same = model(x, labels=torch.tensor([0, 1, 2]))
    assert torch.equal(a, same)
    changed = (a - b).abs().amax(dim=1)  # (B, C, H, W): largest change over levels
    assert changed[:, :, 0, 0].gt(1e-6).all(), "the first pixel must see the label"
    assert changed.gt(1e-6).float().mean() > 0.9


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_source_changes_the_logits(arch, channels):
    model = arch_model(arch, channels, "source", hidden=4 * channels, head_hidden=4 * channels)
    torch.manual_seed(2)
    x = torch.randint(0, 4, (2, channels, 4, 6))
    src = torch.rand(2, 2, 4, 6) * 2 - 1
    with torch.no_grad():
        a = model(x, source=src)
        b = model(x, source=-src)
        half = model(x, source=src[:, :, ::2, ::2])  # (B, S, H/2, W/2): upscaling
    changed = (a - b).abs().amax(dim=1)  # (B, C, H, W)
    assert changed[:, :, 0, 0].gt(1e-6).all(), "the first pixel must see the source"
    assert changed.gt(1e-6).float().mean() > 0.9
    assert half.shape == a.shape and not torch.allclose(half, a)


def test_source_is_seen_beyond_the_causal_context():
    """The source is an input, not a target: the first pixel sees the source pixel below it."""
    model = arch_model("row_lstm", 1, "source").double()
    x = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    src = torch.zeros(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    model(x, source=src)[0, :, 0, 0, 0].sum().backward()
    assert src.grad[0, :, 1, 1].ne(0).any()  # one row below, one to the right


@pytest.mark.parametrize("arch", ARCHS)
def test_class_and_source_together(arch):
    model = arch_model(arch, 3, "class", source_channels=3)
    x = torch.randint(0, 4, (2, 3, 4, 4))
    labels, src = torch.tensor([0, 2]), torch.rand(2, 3, 2, 2) * 2 - 1
    logits = model(x, labels=labels, source=src)
    assert logits.shape == (2, 4, 3, 4, 4)
    with pytest.raises(ValueError, match="labels"):
        model(x, source=src)
    with pytest.raises(ValueError, match="source"):
        model(x, labels=labels)


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_nll_is_cross_entropy(arch, condition):
    model = arch_model(arch, 3, condition)
    torch.manual_seed(3)
    x = torch.randint(0, 4, (2, 3, 3, 4))
    cond = {}
    if condition == "class":
        cond["labels"] = torch.tensor([2, 0])
    if condition == "source":
        cond["source"] = torch.rand(2, 2, 3, 4) * 2 - 1
    logits = model(x, **cond)
    assert logits.shape == (2, 4, 3, 3, 4)
    nll = model.nll(x, **cond)
    assert nll.shape == (2,)
    by_hand = -torch.log_softmax(logits, dim=1).gather(1, x.unsqueeze(1)).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(nll, by_hand)
    torch.testing.assert_close(
        nll.mean() / x[0].numel(), F.cross_entropy(logits, x), msg="mean NLL per sub-pixel"
    )
    torch.testing.assert_close(model.forward_scaled(model.scale(x), **cond), logits)


def test_conditioning_input_errors():
    x = torch.zeros(2, 1, 3, 3, dtype=torch.long)
    plain = arch_model("pixelcnn")
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(x, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no source"):
        plain(x, source=torch.zeros(2, 1, 3, 3))
    classy = arch_model("pixelcnn", condition="class")
    with pytest.raises(ValueError, match="pass labels"):
        classy(x)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        classy(x, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        classy(x, labels=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="shape"):
        classy(x, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        classy(x, labels=torch.tensor([0.0, 1.0]))
    sourced = arch_model("pixelcnn", condition="source")
    with pytest.raises(ValueError, match="pass source"):
        sourced(x)
    with pytest.raises(ValueError, match=r"\(2, 2, Hs, Ws\)"):
        sourced(x, source=torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="float"):
        sourced(x, source=torch.zeros(2, 2, 3, 3, dtype=torch.long))


def test_class_conditional_model_learns_to_use_the_label():
    """Class 0 images are all level 0, class 1 all level 3: the label must explain them."""
    model = arch_model("pixelcnn", 1, "class", num_classes=2)
    labels = torch.tensor([0, 1, 0, 1])
    x = (labels * 3).view(4, 1, 1, 1).expand(4, 1, 4, 4).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        model.nll(x, labels=labels).mean().backward()
        opt.step()
    with torch.no_grad():
        right = model.nll(x, labels=labels)
        wrong = model.nll(x, labels=1 - labels)
    assert (right < wrong).all()
    # The first pixel has no context but the label: its level must come from it.
    with torch.no_grad():
        first = model(x, labels=labels)[:, :, 0, 0, 0].argmax(dim=1)
    assert first.tolist() == x[:, 0, 0, 0].tolist()


class Bound(torch.nn.Module):
    """A conditional model with its labels/source bound, for ``sample_naive(model, ...)``."""

    def __init__(self, model: PixelRNN, **cond: torch.Tensor) -> None:
        super().__init__()
        self.model, self.config, self.cond = model, model.config, cond

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, **self.cond)


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_naive_samples_are_their_own_argmax(arch, condition):
    model = arch_model(arch, 3, condition, layers=1)
    cond = {}
    if condition == "class":
        cond["labels"] = torch.tensor([0, 2])
    if condition == "source":
        cond["source"] = torch.rand(2, 2, 1, 2) * 2 - 1  # half size: upscaling
    sampler_model = Bound(model, **cond) if cond else model
    g = torch.Generator().manual_seed(0)
    x = sample_naive(sampler_model, 2, 2, 3, generator=g, temperature=1e-4)
    assert x.shape == (2, 3, 2, 3)
    with torch.no_grad():
        assert torch.equal(model(x, **cond).argmax(dim=1), x)


# --------------------------------------------------------------------------- Diagonal BiLSTM


@pytest.mark.parametrize("height, width", [(4, 5), (6, 2), (1, 3), (3, 1)])
def test_diagonal_order_lists_each_diagonal_top_to_bottom(height, width):
    order, sizes, above, left = diagonal_order(height, width)
    pixels = [divmod(int(p), width) for p in order]  # (i, j) in diagonal order
    expected = [
        (i, t - i) for t in range(width + height - 1) for i in range(height) if 0 <= t - i < width
    ]
    assert pixels == expected
    assert sum(sizes) == height * width and len(sizes) == width + height - 1
    none = height * width
    for k, (i, j) in enumerate(pixels):
        assert (pixels[above[k]] if i else none) == ((i - 1, j) if i else none)
        assert (pixels[left[k]] if j else none) == ((i, j - 1) if j else none)
        assert (above[k] == none) == (i == 0) and (left[k] == none) == (j == 0)


def reference_diagonal_bilstm(layer: DiagonalBiLSTM, x: torch.Tensor) -> torch.Tensor:
    """Pixel-by-pixel loop in image coordinates, from the raw weights (section 3.2)."""
    b, _, height, width = x.shape
    n = layer.hidden

    def run(lstm, xin, side_step):  # side_step: -1 state from the left, +1 from the right
        gates_in = F.conv2d(xin, lstm.i2s.weight * lstm.i2s.mask, lstm.i2s.bias)
        w_up, w_side = lstm.s2s.weight[:, :, 0], lstm.s2s.weight[:, :, 1]  # (4h, h) each
        zero = x.new_zeros(b, n)
        hs: dict[tuple[int, int], torch.Tensor] = {}
        cs: dict[tuple[int, int], torch.Tensor] = {}
        cols = range(width) if side_step == -1 else range(width - 1, -1, -1)
        for i in range(height):
            for j in cols:
                up = hs.get((i - 1, j), zero)
                side = hs.get((i, j + side_step), zero)
                g = gates_in[:, :, i, j] + up @ w_up.T + side @ w_side.T + lstm.s2s.bias
                ig, fg, og, gg = g[:, :n], g[:, n : 2 * n], g[:, 2 * n : 3 * n], g[:, 3 * n :]
                c_prev = cs.get((i, j + side_step), zero)
                cs[i, j] = torch.sigmoid(fg) * c_prev + torch.sigmoid(ig) * torch.tanh(gg)
                hs[i, j] = torch.sigmoid(og) * torch.tanh(cs[i, j])
        rows = [torch.stack([hs[i, j] for j in range(width)], dim=-1) for i in range(height)]
        return torch.stack(rows, dim=-2)  # (B, h, H, W)

    h_l2r = run(layer.l2r, x, -1)  # state from the left and from above
    h_r2l = run(layer.r2l, x, +1)  # state from the right and from above
    shifted = torch.cat([torch.zeros_like(h_r2l[:, :, :1]), h_r2l[:, :, :-1]], dim=2)  # down
    out = F.conv2d(h_l2r + shifted, layer.out.weight * layer.out.mask, layer.out.bias)
    return x + out


@pytest.mark.parametrize("batch, channels_last", [(2, False), (3, True), (1, True)])
def test_diagonal_bilstm_matches_pixel_loop(batch, channels_last):
    """Diagonal recurrence == the per-pixel definition: values and every gradient."""
    torch.manual_seed(0)
    layer = DiagonalBiLSTM(features=6, hidden=3, channel_groups=3).double()
    x = torch.randn(batch, 6, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = layer(x)
    x_ref = x.detach().clone().requires_grad_(True)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, *layer.parameters()])
    y_ref = reference_diagonal_bilstm(layer, x_ref)
    torch.testing.assert_close(y, y_ref)
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x_ref, *layer.parameters()])
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want)


def layer_dependence(layer: torch.nn.Module, h: int, w: int, features: int) -> torch.Tensor:
    """Bool (H*W, H*W) over pixels in raster order: layer output depends on input."""
    torch.manual_seed(1)
    xs = torch.randn(2, features, h, w, dtype=torch.float64)
    # Not vectorize=True: the Diagonal BiLSTM's hand-written backward writes into
    # preallocated buffers, which vmap cannot batch.
    jac = torch.autograd.functional.jacobian(
        lambda v: layer(v).sum(dim=(0, 1)), xs
    )  # (H, W, B, F, H, W)
    return jac.ne(0).any(dim=3).any(dim=2).reshape(h * w, h * w)


def test_diagonal_bilstm_model_with_wide_input_conv_sees_every_earlier_subpixel():
    h, w, c = 3, 4, 3
    model = arch_model("diagonal_bilstm", c, input_kernel=2 * w + 1).double()
    without_dead_units(model)
    assert dependence(model, h, w, n=2).equal(strictly_earlier(h, w, c))


def test_diagonal_bilstm_layer_sees_the_whole_past_and_no_future():
    h, w = 4, 5
    layer = DiagonalBiLSTM(features=4, hidden=4).double()
    dep = layer_dependence(layer, h, w, 4)
    past_and_present = torch.ones(h * w, h * w, dtype=torch.bool).tril()
    assert dep.equal(past_and_present)  # every earlier pixel, never a later one
    for i in range(1, h):
        # Only the shifted right-to-left pass links the row start to the row above's end.
        assert dep[i * w, (i - 1) * w + (w - 1)]
    for i in range(h):
        for j in range(w - 1):
            assert not dep[i * w + j, i * w + j + 1]  # the same row, one to the right

    row = RowLSTM(features=4, hidden=4, kernel=3).double()
    row_dep = layer_dependence(row, h, w, 4)
    assert not row_dep[raster(1, 0, 0, w, 1), raster(0, w - 1, 0, w, 1)]  # triangular context


def test_diagonal_shift_is_what_keeps_it_causal(monkeypatch):
    """Without the one-row shift the right-to-left pass leaks the pixel to the right."""
    layer = DiagonalBiLSTM(features=4, hidden=4).double()
    monkeypatch.setattr(diagonal, "R2L_SHIFT", 0)
    dep = layer_dependence(layer, 3, 4, 4)
    assert dep[0, 1]  # pixel (0, 0) now sees (0, 1)


def test_diagonal_bilstm_cond_bias_reaches_both_directions():
    torch.manual_seed(0)
    layer = DiagonalBiLSTM(features=4, hidden=2)
    x = torch.randn(1, 4, 3, 4)
    base = layer(x)
    for half in (0, 1):
        cond = torch.zeros(1, layer.cond_width, 1, 1)
        cond[:, half * 8 : (half + 1) * 8] = 1.0
        moved = (layer(x, cond) - base).abs().sum(dim=1)[0]  # (H, W)
        if half == 0:
            assert moved.gt(0).all()
        else:  # the right-to-left half reaches rows 1.. (it is shifted down)
            assert moved[0].eq(0).all() and moved[1:].gt(0).all()


# --------------------------------------------------------------------------- PixelCNN


def test_pixelcnn_block_uses_the_config_kernel_and_masks():
    cfg = arch_config("pixelcnn", 3, kernel=5)
    model = PixelRNN(cfg)
    block = model.layers[0]
    assert isinstance(block, PixelCNNBlock)
    assert block.conv.kernel_size == (5, 5)
    assert {block.reduce.mask_type, block.conv.mask_type, block.expand.mask_type} == {"B"}
    assert all(m.channel_groups == 3 for m in (block.reduce, block.conv, block.expand))


# --------------------------------------------------------------------------- parameters


def test_count_parameters_counts_the_real_model():
    for arch in ARCHS:
        cfg = arch_config(arch, 3, "class", source_channels=3)
        model = PixelRNN(cfg)
        assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "base",
    [
        GeneratorConfig(hidden=64, layers=4, levels=256),
        GeneratorConfig(channels=3, hidden=30, head_hidden=30, layers=3, levels=17),
        GeneratorConfig(arch="pixelcnn", hidden=96, layers=6, levels=17, num_classes=10),
    ],
)
def test_matched_hidden_gives_equal_parameter_counts(base):
    target = count_parameters(base)
    for arch in ARCHS:
        hidden = matched_hidden(base, target, arch)
        assert hidden % base.channels == 0
        cfg = dataclasses.replace(base, arch=arch, hidden=hidden)
        got = count_parameters(cfg)
        assert abs(got / target - 1) < 0.1, (arch, hidden, got, target)
        # Closest: one colour group more or less is no better.
        for other in (hidden - base.channels, hidden + base.channels):
            if other > 0:
                n = count_parameters(dataclasses.replace(cfg, hidden=other))
                assert abs(n - target) >= abs(got - target)
    assert matched_hidden(base, target, base.arch) == base.hidden


# --------------------------------------------------------------------------- config


def test_old_config_dicts_and_state_dicts_still_load():
    old = {
        "arch": "row_lstm",
        "channels": 1,
        "levels": 17,
        "hidden": 8,
        "layers": 2,
        "kernel": 3,
        "input_kernel": 7,
        "head_hidden": 16,
    }
    cfg = GeneratorConfig.from_dict(old)
    assert cfg.num_classes == 0 and cfg.source_channels == 0 and not cfg.conditional
    # An unconditional Row LSTM keeps the parameter names of older checkpoints.
    names = set(PixelRNN(cfg).state_dict())
    layer_keys = {
        f"layers.{k}.{m}.{p}" for k in range(2) for m in ("i2s", "out") for p in ("weight", "bias")
    }
    layer_keys |= {f"layers.{k}.{m}.mask" for k in range(2) for m in ("i2s", "out")}
    layer_keys |= {f"layers.{k}.s2s.{p}" for k in range(2) for p in ("weight", "bias")}
    head = {f"head.{k}.{p}" for k in (1, 3) for p in ("weight", "bias", "mask")}
    conv = {"input_conv.weight", "input_conv.bias", "input_conv.mask"}
    assert names == layer_keys | head | conv
    with pytest.raises(ValueError, match="num_class"):
        GeneratorConfig.from_dict({**old, "num_class": 10})


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_classes=-1), "num_classes"),
        (dict(source_channels=-2), "source_channels"),
        (dict(num_classes=2.0), "num_classes"),
        (dict(arch="diagonal_lstm"), "diagonal_bilstm"),
    ],
)
def test_config_rejects_bad_conditioning_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**overrides)
