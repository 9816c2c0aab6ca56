"""Tests of rnnexp.models: masks, causality, Row LSTM, PixelRNN, naive sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnexp.models import GeneratorConfig, MaskedConv2d, PixelRNN, RowLSTM, sample_naive
from rnnexp.models.masked import build_mask, contiguous_groups


def small_config(channels: int = 1, **overrides) -> GeneratorConfig:
    hidden = 6 if channels == 3 else 8
    d = dict(channels=channels, levels=4, hidden=hidden, layers=2, kernel=3, head_hidden=2 * hidden)
    d.update(overrides)
    return GeneratorConfig(**d)


def small_model(channels: int = 1, seed: int = 0, **overrides) -> PixelRNN:
    torch.manual_seed(seed)
    return PixelRNN(small_config(channels, **overrides))


# --------------------------------------------------------------------------- masks


def centre(conv: MaskedConv2d) -> torch.Tensor:
    kh, kw = conv.kernel_size
    return conv.mask[:, :, kh // 2, kw // 2]


def test_mask_spatial_pattern_grey():
    a = MaskedConv2d(1, 1, 3, "A")
    b = MaskedConv2d(1, 1, 3, "B")
    assert a.mask[0, 0].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.mask[0, 0].tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    big = MaskedConv2d(2, 4, 5, "B")
    assert big.mask[:, :, :2].eq(1).all()  # rows above
    assert big.mask[:, :, 2, :2].eq(1).all()  # left of centre
    assert big.mask[:, :, 2, 3:].eq(0).all()  # right of centre
    assert big.mask[:, :, 3:].eq(0).all()  # rows below


def test_mask_row_kernel():
    b = MaskedConv2d(1, 2, (1, 3), "B")
    a = MaskedConv2d(1, 2, (1, 5), "A")
    assert b.mask.shape == (2, 1, 1, 3)
    assert b.mask[0, 0].tolist() == [[1, 1, 0]]
    assert a.mask[1, 0].tolist() == [[1, 1, 0, 0, 0]]
    assert b.padding == (0, 1) and a.padding == (0, 2)
    assert b(torch.randn(2, 1, 4, 6)).shape == (2, 2, 4, 6)


def test_mask_channel_groups_rgb_a():
    conv = MaskedConv2d(3, 6, 3, "A", channel_groups=3)  # image input: one channel per group
    assert centre(conv).tolist() == [
        [0, 0, 0],
        [0, 0, 0],
        [1, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 0],
    ]
    assert conv.mask[:, :, 0].eq(1).all() and conv.mask[:, :, 1, 0].eq(1).all()
    assert conv.mask[:, :, 1, 2].eq(0).all() and conv.mask[:, :, 2].eq(0).all()


def test_mask_channel_groups_rgb_b():
    conv = MaskedConv2d(6, 3, 1, "B", channel_groups=3)
    assert centre(conv).tolist() == [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ]


def test_mask_explicit_out_groups():
    groups = contiguous_groups(3, 3).repeat(2)  # [0, 1, 2, 0, 1, 2]
    conv = MaskedConv2d(3, 6, (1, 3), "B", 3, out_groups=groups)
    assert conv.mask[:, :, 0, 1].tolist() == [
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
    ]
    assert conv.mask[:, :, 0, 0].eq(1).all() and conv.mask[:, :, 0, 2].eq(0).all()


def test_masked_conv_uses_mask_in_forward():
    conv = MaskedConv2d(1, 1, 3, "A", bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0  # the centre pixel itself
    x[0, 0, 2, 0] = 1.0  # a pixel below
    assert conv(x)[0, 0, 1, 1].item() == 0.0
    x[0, 0, 0, 2] = 1.0  # above-right: visible
    assert conv(x)[0, 0, 1, 1].item() == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=4, out_channels=6, kernel_size=3, mask_type="B", channel_groups=3),
        dict(in_channels=3, out_channels=4, kernel_size=3, mask_type="B", channel_groups=3),
        dict(in_channels=1, out_channels=1, kernel_size=2, mask_type="B"),
        dict(in_channels=1, out_channels=1, kernel_size=3, mask_type="C"),
        dict(
            in_channels=3,
            out_channels=2,
            kernel_size=1,
            mask_type="B",
            channel_groups=3,
            out_groups=[0, 3],
        ),
    ],
)
def test_masked_conv_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MaskedConv2d(**kwargs)


# --------------------------------------------------------------------------- causality


def dependence(
    model: PixelRNN, h: int, w: int, n: int = 8, source_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Bool (C*H*W, C*H*W) in raster order (row, column, channel): out depends on in.

    Conditional models get ``n`` fixed labels and/or a random source image
    (``source_size``, default ``(h, w)``); the dependence is on the image ``x`` only.
    """
    cfg = model.config
    c = cfg.channels
    torch.manual_seed(1)
    # Several random inputs: a ReLU can zero a real dependence at one input point.
    # Images in a batch are independent, so d(sum_b logits_b)/d x_b = d logits_b/d x_b.
    xs = torch.rand(n, c, h, w, dtype=torch.float64) * 2 - 1
    cond: dict[str, torch.Tensor] = {}
    if cfg.num_classes:
        cond["labels"] = torch.arange(n) % cfg.num_classes
    if cfg.source_channels:
        size = source_size or (h, w)
        cond["source"] = torch.rand(n, cfg.source_channels, *size, dtype=torch.float64) * 2 - 1
    # A random positive mix of the L levels' logits has an exactly zero gradient
    # where every level's has (and almost surely only there): L times fewer rows.
    mix = torch.rand(cfg.levels, dtype=torch.float64) + 0.5

    def mixed(v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("blchw,l->chw", model.forward_scaled(v, **cond), mix)

    # One backward per output, not vectorize=True: the Diagonal BiLSTM's hand-written
    # backward writes into preallocated buffers, which vmap cannot batch.
    jac = torch.autograd.functional.jacobian(mixed, xs)  # (C, H, W, B, C, H, W)
    dep = jac.ne(0).any(dim=3)  # (C, H, W, C, H, W)
    dep = dep.permute(1, 2, 0, 4, 5, 3)  # (H, W, C, H, W, C): raster order
    return dep.reshape(h * w * c, h * w * c)


def without_dead_units(model: torch.nn.Module) -> None:
    """Replace every ReLU module by a leaky ReLU (same wiring, no dead units)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, torch.nn.LeakyReLU(0.1))


def raster(i: int, j: int, ch: int, w: int, c: int) -> int:
    return (i * w + j) * c + ch


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelrnn_is_causal(channels):
    h, w = 5, 7
    model = small_model(channels).double()
    dep = dependence(model, h, w)
    n = dep.shape[0]
    # Nothing depends on its own or a later sub-pixel (upper triangle incl. diagonal).
    future = torch.ones(n, n, dtype=torch.bool).triu()
    assert not dep[future].any(), "a logit depends on its own or a later (pixel, channel)"
    # And the model does see the past: left and upper neighbours, earlier channels.
    # A tiny random head can have dead ReLUs that hide real paths; an element-wise
    # leaky ReLU keeps the wiring and makes every structural path visible.
    without_dead_units(model)
    dep = dependence(model, h, w)
    assert not dep[future].any()
    c = channels
    for i in range(h):
        for j in range(w):
            for ch in range(c):
                out = raster(i, j, ch, w, c)
                if j > 0:
                    assert dep[out, raster(i, j - 1, c - 1, w, c)]
                if i > 0:
                    assert dep[out, raster(i - 1, j, 0, w, c)]
                    assert dep[out, raster(i - 1, min(j + 3, w - 1), c - 1, w, c)]
                for earlier in range(ch):
                    assert dep[out, raster(i, j, earlier, w, c)]
    # Rows far above are reached through the recurrence (beyond the 7x7 input conv),
    # within the Row LSTM's triangular context (one more column per row up).
    assert dep[raster(h - 1, 0, 0, w, c), raster(0, w - 1, 0, w, c)]
    assert not dep[raster(h - 1, 0, 0, w, c), raster(h - 2, w - 1, 0, w, c)]


@pytest.mark.parametrize("channels", [1, 3])
def test_causality_check_catches_a_leak(channels):
    """The checker above is not vacuous: a mask-B input conv leaks the current sub-pixel."""
    model = small_model(channels).double()
    conv = model.input_conv
    groups = contiguous_groups(channels, channels)
    conv.mask.copy_(
        build_mask(groups, contiguous_groups(conv.out_channels, channels), conv.kernel_size, "B")
    )
    without_dead_units(model)
    dep = dependence(model, 3, 4)
    assert dep.diagonal().all()


# --------------------------------------------------------------------------- Row LSTM


def reference_row_lstm(layer: RowLSTM, x: torch.Tensor) -> torch.Tensor:
    """Plain per-row loop with x[:, :, r] indexing, from the raw weights."""
    kh, kw = layer.i2s.kernel_size
    gates_in = F.conv2d(
        x, layer.i2s.weight * layer.i2s.mask, layer.i2s.bias, padding=(kh // 2, kw // 2)
    )
    b, _, height, width = x.shape
    h = x.new_zeros(b, layer.hidden, width)
    c = x.new_zeros(b, layer.hidden, width)
    hs = []
    for r in range(height):
        g = gates_in[:, :, r] + F.conv1d(
            h, layer.s2s.weight, layer.s2s.bias, padding=layer.kernel // 2
        )
        n = layer.hidden
        i, f, o, gg = g[:, :n], g[:, n : 2 * n], g[:, 2 * n : 3 * n], g[:, 3 * n :]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    hidden = torch.stack(hs, dim=2)
    out = F.conv2d(hidden, layer.out.weight * layer.out.mask, layer.out.bias)
    return x + out


@pytest.mark.parametrize("channels,kernel", [(1, 3), (3, 5)])
def test_row_lstm_matches_reference_loop(channels, kernel):
    torch.manual_seed(0)
    layer = RowLSTM(features=12, hidden=6, kernel=kernel, channel_groups=channels).double()
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = reference_row_lstm(layer, x_ref)
    torch.testing.assert_close(y, y_ref)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    layer.zero_grad()
    (y_ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for name, p in layer.named_parameters():  # i2s, s2s and out, weights and biases
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_row_lstm_gate_mask_keeps_channel_groups():
    layer = RowLSTM(features=6, hidden=3, kernel=3, channel_groups=3)
    gate_groups = [0, 1, 2] * 4  # [i|f|o|g], each split R, G, B
    centre_mask = layer.i2s.mask[:, :, 0, 1]  # (4h, F)
    in_groups = contiguous_groups(6, 3)
    for out, g in enumerate(gate_groups):
        assert centre_mask[out].tolist() == (in_groups <= g).float().tolist()


# --------------------------------------------------------------------------- generator


def test_pixelrnn_shapes_and_nll():
    model = small_model(3)
    torch.manual_seed(3)
    x = torch.randint(0, 4, (2, 3, 4, 5))
    logits = model(x)
    assert logits.shape == (2, 4, 3, 4, 5)
    nll = model.nll(x)
    assert nll.shape == (2,)
    expected = F.cross_entropy(logits, x, reduction="none").sum(dim=(1, 2, 3))
    torch.testing.assert_close(nll, expected)
    by_hand = -torch.log_softmax(logits, dim=1).gather(1, x.unsqueeze(1)).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(nll, by_hand)
    assert (nll > 0).all()


def test_pixelrnn_scales_input_to_unit_interval():
    model = small_model(1)
    x = torch.tensor([0, 1, 2, 3]).view(1, 1, 2, 2)
    assert model.scale(x).flatten().tolist() == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])
    torch.testing.assert_close(model(x), model.forward_scaled(model.scale(x)))


def test_pixelrnn_rejects_bad_input():
    model = small_model(1)
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(1, 3, 3, 3, dtype=torch.long))


def test_pixelrnn_learns():
    model = small_model(1)
    torch.manual_seed(0)
    x = torch.randint(0, 4, (4, 1, 4, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.nll(x).mean().item()
    for _ in range(30):
        opt.zero_grad()
        loss = model.nll(x).mean()
        loss.backward()
        opt.step()
    assert model.nll(x).mean().item() < 0.8 * first


def test_config_roundtrip_and_unknown_keys():
    cfg = GeneratorConfig(channels=3, hidden=9, head_hidden=12, levels=17)
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="hiden"):
        GeneratorConfig.from_dict({"hiden": 8})


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(arch="pixel_lstm"), "row_lstm"),
        (dict(channels=3, hidden=8, head_hidden=6), "hidden"),
        (dict(channels=3, hidden=6, head_hidden=8), "head_hidden"),
        (dict(kernel=4), "kernel"),
        (dict(levels=1), "levels"),
        (dict(hidden="8"), "hidden"),
    ],
)
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**overrides)


def test_pixelrnn_rejects_unknown_arch():
    cfg = small_config(1)
    cfg.arch = "diagonal_lstm"  # bypasses __post_init__
    with pytest.raises(ValueError, match="row_lstm"):
        PixelRNN(cfg)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_naive_shape_range_determinism(channels):
    model = small_model(channels, layers=1)
    model.train()

    def draw(seed):
        return sample_naive(model, 3, 3, 4, generator=torch.Generator().manual_seed(seed))

    a, b, other = draw(0), draw(0), draw(1)
    assert a.shape == (3, channels, 3, 4) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() <= 3
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert model.training  # flag restored


def test_sample_naive_follows_model_distribution():
    model = small_model(1, layers=1)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(torch.zeros(1, 1, 1, 1, dtype=torch.long))[0, :, 0, 0, 0], 0)
    n = 4000
    x = sample_naive(model, n, 1, 1, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(x.flatten(), minlength=4).double() / n
    torch.testing.assert_close(freq, probs.double(), atol=0.03, rtol=0)


def test_sample_naive_low_temperature_is_greedy():
    model = small_model(3, layers=1)
    a = sample_naive(model, 2, 2, 3, generator=torch.Generator().manual_seed(0), temperature=1e-4)
    b = sample_naive(model, 2, 2, 3, generator=torch.Generator().manual_seed(5), temperature=1e-4)
    assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(model(a).argmax(dim=1), a)  # every sub-pixel is its own argmax


def test_sample_naive_keeps_known_pixels():
    model = small_model(3, layers=1)
    torch.manual_seed(0)
    known = torch.randint(0, 4, (2, 3, 4, 4))
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[:, :, :2] = True  # top half given
    mask[0, 1, 3, 3] = True  # and one channel of one pixel in one image
    out = sample_naive(
        model, 2, 4, 4, generator=torch.Generator().manual_seed(0), known=known, known_mask=mask
    )
    assert torch.equal(out[mask], known[mask])
    assert out.min() >= 0 and out.max() <= 3
    full = sample_naive(model, 2, 4, 4, known=known, known_mask=torch.ones_like(mask))
    assert torch.equal(full, known)


class CountingModel(torch.nn.Module):
    """Causal stub: the next sub-pixel (raster order, then channels) is previous + 1 mod L."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.config = GeneratorConfig(
            channels=channels, levels=levels, hidden=channels, head_hidden=channels
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        b, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(b, -1)  # (B, H*W*C) raster order
        prev = torch.cat([flat.new_full((b, 1), -1), flat[:, :-1]], dim=1)
        target = (prev + 1) % self.config.levels
        logits = F.one_hot(target, self.config.levels).float() * 50.0  # (B, N, L)
        return logits.view(b, h, w, c, -1).permute(0, 4, 3, 1, 2)  # (B, L, C, H, W)


def test_sample_naive_order_is_raster_then_channels():
    model = CountingModel(channels=3, levels=7)
    out = sample_naive(model, 2, 3, 4)
    expected = (torch.arange(3 * 4 * 3) % 7).view(3, 4, 3).permute(2, 0, 1)  # (C, H, W)
    assert torch.equal(out, expected.expand(2, -1, -1, -1))
    assert model.modes and not any(model.modes)  # ran in eval mode
    assert model.training


def test_sample_naive_completion_conditions_on_known():
    model = CountingModel(channels=1, levels=5)
    known = torch.zeros(1, 1, 2, 3, dtype=torch.long)
    mask = torch.zeros_like(known, dtype=torch.bool)
    known[0, 0, 0, 1] = 3
    mask[0, 0, 0, 1] = True
    out = sample_naive(model, 1, 2, 3, known=known, known_mask=mask)
    assert out.flatten().tolist() == [0, 3, 4, 0, 1, 2]


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_sample_naive_rejects_bad_temperature(temperature):
    model = small_model(1, layers=1)
    with pytest.raises(ValueError, match="temperature"):
        sample_naive(model, 1, 2, 2, temperature=temperature)


def test_sample_naive_rejects_bad_known():
    model = small_model(1, layers=1)
    known = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="together"):
        sample_naive(model, 1, 2, 2, known=known)
    with pytest.raises(ValueError, match="shape"):
        sample_naive(model, 1, 2, 3, known=known, known_mask=torch.ones_like(known).bool())
    with pytest.raises(ValueError, match="levels"):
        sample_naive(model, 1, 2, 2, known=known + 7, known_mask=torch.ones_like(known).bool())


@pytest.mark.parametrize(
    "kernel, mask_type, groups",
    [(7, "A", 1), (7, "A", 3), ((1, 3), "B", 1), ((1, 5), "A", 1), ((1, 3), "B", 3), (3, "B", 1)],
)
def test_cropped_masked_conv_equals_full_masked_conv(kernel, mask_type, groups):
    torch.manual_seed(0)
    conv = MaskedConv2d(3 * groups, 6, kernel, mask_type, groups)
    x = torch.randn(2, 3 * groups, 5, 7)
    full = F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=conv.padding)
    assert conv._support is not None  # the cropped path is the one under test
    torch.testing.assert_close(conv(x), full, rtol=1e-5, atol=1e-5)
