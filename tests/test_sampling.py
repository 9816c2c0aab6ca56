"""Tests of the samplers: the cached sampler equals the naive one, step by step.

Invariants (ARCHITECTURE.md, "Invariants": cached sampling equals naive sampling):

- at every step the cached logits equal a full forward pass on the partially
  generated image (every arch, grey and RGB, unconditional, class, source);
- for the same seed both samplers draw the same images and consume the same random
  numbers (the generator states agree afterwards), also with completion
  (``known``/``known_mask``) and at other temperatures;
- the model's training flag is restored.

Models are tiny (hidden 6-8, 2 layers, 5x6 images) and float64 where values are
compared exactly; one float32 test checks the tolerance of the default dtype.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import rnnexp.models.sampling
from rnnexp.models import ARCHS, GeneratorConfig, PixelRNN
from rnnexp.models.cached import PHASES, CachedSampler
from rnnexp.models.sampling import _cdf, _choose, _Setup, sample_cached, sample_naive

CONDITIONS = ("unconditional", "class", "source")
H, W, N = 5, 6, 3


def tiny_model(
    arch: str,
    channels: int = 1,
    condition: str = "unconditional",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    **overrides,
) -> PixelRNN:
    hidden = 6 if channels == 3 else 8
    d = dict(
        arch=arch,
        channels=channels,
        levels=6,
        hidden=hidden,
        layers=2,
        kernel=3,
        head_hidden=hidden,
        num_classes=3 if condition == "class" else 0,
        source_channels=2 if condition == "source" else 0,
    )
    d.update(overrides)
    torch.manual_seed(seed)
    model = PixelRNN(GeneratorConfig(**d)).to(dtype)
    # Default-initialised tiny models give small, similar logits; bigger weights make
    # every path matter more, so a wrong cache shows as a large difference.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


def cond_inputs(model: PixelRNN, n: int = N, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond: dict[str, torch.Tensor] = {}
    if model.config.num_classes:
        cond["labels"] = torch.randint(0, model.config.num_classes, (n,), generator=g)
    if model.config.source_channels:
        # Half resolution and float32 whatever the model's dtype: resized and cast inside.
        size = (n, model.config.source_channels, 3, 3)
        cond["source"] = torch.rand(size, generator=g) * 2 - 1
    return cond


def check_steps_match_forward(
    model: PixelRNN, height: int, width: int, cond: dict, atol: float, rtol: float = 0.0
) -> None:
    """Walk CachedSampler.steps with random levels; compare with full forward passes."""
    c_, levels = model.config.channels, model.config.levels
    g = torch.Generator().manual_seed(3)
    sampler = CachedSampler(
        model.eval(), torch.zeros(N, c_, height, width, dtype=torch.long), **cond
    )
    order = []
    with torch.no_grad():
        for i, j, c, logits in sampler.steps():
            order.append((i, j, c))
            full = model(sampler.x, **cond)[:, :, c, i, j]  # (N, L)
            torch.testing.assert_close(logits, full, atol=atol, rtol=rtol, msg=f"at {(i, j, c)}")
            sampler.put(i, j, c, torch.randint(0, levels, (N,), generator=g))
    assert order == list(itertools.product(range(height), range(width), range(c_)))
    assert sampler.x.ne(0).any()  # the puts landed in x


# --------------------------------------------------------------------------- logits


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_logits_equal_full_forward_at_every_step(arch, channels, condition):
    model = tiny_model(arch, channels, condition)
    check_steps_match_forward(model, H, W, cond_inputs(model), atol=1e-10)


@pytest.mark.parametrize(
    "arch, overrides, height, width",
    [
        ("row_lstm", dict(kernel=5, input_kernel=3), 4, 7),
        ("row_lstm", dict(kernel=1, layers=3), 3, 4),
        ("pixelcnn", dict(kernel=5, input_kernel=5), 4, 7),
        ("diagonal_bilstm", dict(input_kernel=3, layers=3), 7, 3),  # taller than wide
        ("diagonal_bilstm", dict(), 1, 5),  # one row: no right-to-left term at all
        ("pixelcnn", dict(), 6, 1),  # one column
    ],
)
def test_cached_logits_other_kernels_and_shapes(arch, overrides, height, width):
    model = tiny_model(arch, 3, "class", **overrides)
    check_steps_match_forward(model, height, width, cond_inputs(model), atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_logits_float32(arch):
    model = tiny_model(arch, 3, "source", dtype=torch.float32)
    check_steps_match_forward(model, H, W, cond_inputs(model), atol=1e-5, rtol=1e-5)


def test_steps_skip_yields_only_unknown_subpixels_with_right_logits():
    model = tiny_model("diagonal_bilstm", 3)
    torch.manual_seed(0)
    x = torch.randint(0, 6, (N, 3, H, W))
    skip = torch.rand(3, H, W) < 0.4
    skip[2, 1, 2] = skip[0, 1, 3] = True  # a last and a first channel among them
    skip[:, 2, 4] = True  # a whole pixel
    sampler = CachedSampler(model.eval(), x.clone())
    seen = []
    with torch.no_grad():
        full = model(x)  # nothing is put: x stays the image throughout
        for i, j, c, logits in sampler.steps(skip):
            seen.append((c, i, j))
            torch.testing.assert_close(logits, full[:, :, c, i, j], atol=1e-10, rtol=0)
    assert seen == [
        (c, i, j) for i in range(H) for j in range(W) for c in range(3) if not skip[c, i, j]
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_put_elsewhere_than_the_current_subpixel_is_seen_later(arch):
    # Levels put ahead of the walk (before it and during it, in a later row) are in x
    # and in the cached input, so the logits still equal full forward passes.
    model = tiny_model(arch, 3, "class").eval()
    cond = cond_inputs(model)
    sampler = CachedSampler(model, torch.zeros(N, 3, H, W, dtype=torch.long), **cond)
    levels = torch.tensor([5, 1, 3])
    sampler.put(1, 2, 0, levels)  # before the walk
    with torch.no_grad():
        for step, (i, j, c, logits) in enumerate(sampler.steps()):
            if step == 4:
                sampler.put(3, 1, 2, levels)  # during the walk, rows ahead
            full = model(sampler.x, **cond)[:, :, c, i, j]
            torch.testing.assert_close(logits, full, atol=1e-10, rtol=0, msg=f"at {(i, j, c)}")
    assert torch.equal(sampler.x[:, 0, 1, 2], levels)
    assert torch.equal(sampler.x[:, 2, 3, 1], levels)


# --------------------------------------------------------------------------- sampling


def test_choose_draws_the_level_whose_interval_holds_u():
    x = torch.zeros(7, 1, 1, 1, dtype=torch.long)
    s = _Setup(x, None, None, {}, 1.0, torch.device("cpu"), None)
    # Probabilities 0.25, 0, 0.5, 0.25: level l is drawn for u in [cdf[l-1], cdf[l]).
    cdf = torch.tensor([0.25, 0.25, 0.75, 1.0], dtype=torch.float64).repeat(7, 1)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.7499, 0.75, 0.9999, 1 - 2**-53], dtype=torch.float64)
    s.uniform = lambda i: u[:, None]  # type: ignore[method-assign]
    assert _choose(s, cdf, 0, 0, 0).tolist() == [0, 0, 2, 2, 3, 3, 3]  # never level 1
    # A total rounded below u still draws the last level, not one past it.
    short = torch.tensor([0.5, 1 - 2**-52], dtype=torch.float64).repeat(7, 1)
    assert _choose(s, short, 0, 0, 0).tolist() == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_cdf_is_the_cumulative_softmax_summed_in_float64(temperature):
    x = torch.zeros(2, 1, 1, 1, dtype=torch.long)
    s = _Setup(x, None, None, {}, temperature, torch.device("cpu"), None)
    logits = torch.tensor([[1.0, -2.0, 0.5, 0.1], [0.0, 3.0, -1.0, 2.0]])
    cdf = _cdf(s, logits)
    assert cdf.dtype == torch.float64
    expected = torch.softmax(logits.double() / temperature, dim=1).cumsum(1)
    torch.testing.assert_close(cdf, expected, atol=1e-7, rtol=0)  # float32 softmax
    assert torch.equal(_cdf(s, logits.double()), expected)  # float64 logits: all in float64


def test_draws_use_one_uniform_number_per_image_and_row_order():
    # The uniform numbers of a row are drawn in one call; both samplers take them in
    # the same order, so the generator ends in the same state as one rand per draw.
    model = tiny_model("pixelcnn", 1)
    g = torch.Generator().manual_seed(3)
    sample_cached(model, N, 2, 3, generator=g)
    expected = torch.Generator().manual_seed(3)
    for _ in range(2):
        torch.rand(3, N, 1, generator=expected, dtype=torch.float64)
    assert torch.equal(g.get_state(), expected.get_state())


def test_cached_timings_split_and_same_images():
    model = tiny_model("row_lstm", 3, "class")
    cond = cond_inputs(model)
    timings: dict[str, float] = {}
    a = sample_cached(model, N, H, W, generator=torch.Generator().manual_seed(2), **cond)
    b = sample_cached(
        model, N, H, W, generator=torch.Generator().manual_seed(2), timings=timings, **cond
    )
    assert torch.equal(a, b)
    assert set(timings) == {*PHASES, "softmax", "sampling"}
    assert all(seconds > 0 for seconds in timings.values())


def test_cached_walk_on_one_thread_and_the_setting_restored(monkeypatch):
    seen: dict[str, list[int]] = {"draw": [], "rows": []}
    choose, start_row = rnnexp.models.sampling._choose, CachedSampler._start_row

    def probe_draw(*args):
        seen["draw"].append(torch.get_num_threads())
        return choose(*args)

    def probe_rows(self, i):
        seen["rows"].append(torch.get_num_threads())
        return start_row(self, i)

    monkeypatch.setattr(rnnexp.models.sampling, "_choose", probe_draw)
    monkeypatch.setattr(CachedSampler, "_start_row", probe_rows)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 thread differs from the setting outside
    try:
        sample_cached(tiny_model("row_lstm"), 2, 3, 2)
        assert seen == {"draw": [1] * 6, "rows": [1] * 3}
        assert torch.get_num_threads() == 2
        # A walk left early (closed generator) restores the setting too.
        sampler = CachedSampler(tiny_model("pixelcnn"), torch.zeros(1, 1, 3, 3, dtype=torch.long))
        steps = sampler.steps()
        next(steps)
        assert torch.get_num_threads() == 1
        steps.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def draw_both(model, height=H, width=W, **kw):
    """(naive, cached, naive generator state, cached generator state), same seed."""
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    a = sample_naive(model, N, height, width, generator=g1, **kw)
    b = sample_cached(model, N, height, width, generator=g2, **kw)
    return a, b, g1.get_state(), g2.get_state()


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_samples_equal_naive_samples(arch, channels, condition):
    model = tiny_model(arch, channels, condition)
    a, b, s1, s2 = draw_both(model, **cond_inputs(model))
    assert a.dtype == b.dtype == torch.long and a.shape == (N, channels, H, W)
    assert torch.equal(a, b)
    assert torch.equal(s1, s2)  # the same random numbers were consumed
    assert a.unique().numel() > 2  # not a degenerate model that always draws one level
    other = sample_cached(
        model, N, H, W, generator=torch.Generator().manual_seed(12), **cond_inputs(model)
    )
    assert not torch.equal(a, other)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_completion_equals_naive_completion(arch, channels):
    model = tiny_model(arch, channels, "class")
    torch.manual_seed(1)
    known = torch.randint(0, 6, (N, channels, H, W))
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[:, :, :2] = True  # top rows known in every image: no draws there
    mask[:, :, 3, 1:4] = True  # and a few pixels further down
    mask[0, :, 4] = True  # one image's last row
    mask[1, -1, 2, 2] = True  # one image's last channel of a pixel
    mask[:, 0, 4, 5] = True  # first channel of a pixel in every image
    mask[:, -1, 2, 5] = True  # last channel of a pixel in every image
    a, b, s1, s2 = draw_both(model, known=known, known_mask=mask, **cond_inputs(model))
    assert torch.equal(a, b)
    assert torch.equal(s1, s2)
    assert torch.equal(b[mask], known[mask])
    assert not torch.equal(b, known)  # the rest was sampled
    everything = sample_cached(
        model, N, H, W, known=known, known_mask=torch.ones_like(mask), **cond_inputs(model)
    )
    assert torch.equal(everything, known)


@pytest.mark.parametrize("temperature", [0.3, 3.0])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_temperature_equals_naive(arch, temperature):
    model = tiny_model(arch, 3)
    a, b, s1, s2 = draw_both(model, temperature=temperature)
    assert torch.equal(a, b) and torch.equal(s1, s2)
    base, _, _, _ = draw_both(model)
    assert not torch.equal(a, base)  # the temperature changed the draws


def test_cached_low_temperature_is_greedy():
    model = tiny_model("row_lstm", 3, "class")
    cond = cond_inputs(model)
    x = sample_cached(
        model, N, H, W, generator=torch.Generator().manual_seed(0), temperature=1e-6, **cond
    )
    with torch.no_grad():
        assert torch.equal(model(x, **cond).argmax(dim=1), x)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_cached_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        sample_cached(tiny_model("pixelcnn"), 1, 2, 2, temperature=temperature)


def test_cached_rejects_bad_known_and_conditioning():
    model = tiny_model("row_lstm", condition="class")
    known = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    labels = torch.tensor([0])
    with pytest.raises(ValueError, match="together"):
        sample_cached(model, 1, 2, 2, known=known, labels=labels)
    with pytest.raises(ValueError, match="pass labels"):
        sample_cached(model, 1, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        sample_cached(model, 2, 2, 2, labels=labels)  # one label for two images


@pytest.mark.parametrize("arch", ARCHS)
def test_training_flag_restored(arch):
    model = tiny_model(arch, condition="class").train()
    sample_cached(model, 2, 2, 3, labels=torch.tensor([0, 1]))
    assert model.training
    with pytest.raises(ValueError):
        sample_cached(model, 2, 2, 3, labels=torch.tensor([0, 5]))  # label out of range
    assert model.training
    model.eval()
    sample_cached(model, 2, 2, 3, labels=torch.tensor([0, 1]))
    assert not model.training


def test_float32_samples_equal_naive():
    model = tiny_model("diagonal_bilstm", 3, "source", dtype=torch.float32)
    a, b, s1, s2 = draw_both(model, **cond_inputs(model))
    assert torch.equal(a, b) and torch.equal(s1, s2)


# --------------------------------------------------------------------------- naive sampler


class Bound(torch.nn.Module):
    """A conditional model with its labels/source bound: a stub with ``forward(x)``."""

    def __init__(self, model: PixelRNN, **cond: torch.Tensor) -> None:
        super().__init__()
        self.model, self.config, self.cond = model, model.config, cond

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, **self.cond)


@pytest.mark.parametrize("condition", ["class", "source"])
def test_naive_passes_labels_and_source_to_the_model(condition):
    model = tiny_model("pixelcnn", 1, condition)
    cond = cond_inputs(model)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    direct = sample_naive(model, N, 3, 4, generator=g1, **cond)
    # The bound stub takes forward(x) only; the source cast as sample_naive casts it.
    bound_cond = {k: v.double() if v.is_floating_point() else v for k, v in cond.items()}
    bound = sample_naive(Bound(model, **bound_cond), N, 3, 4, generator=g2)
    assert torch.equal(direct, bound)
    other = dict(cond)
    key = "labels" if condition == "class" else "source"
    other[key] = (cond[key] + 1) % 3 if condition == "class" else -cond[key]
    changed = sample_naive(model, N, 3, 4, generator=torch.Generator().manual_seed(4), **other)
    assert not torch.equal(direct, changed)


class CountingModel(torch.nn.Module):
    """Causal stub with only ``forward(x)``: the next sub-pixel is the previous + 1 mod L."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.config = GeneratorConfig(
            channels=channels, levels=levels, hidden=channels, head_hidden=channels
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(b, -1)  # (B, H*W*C) raster order
        prev = torch.cat([flat.new_full((b, 1), -1), flat[:, :-1]], dim=1)
        logits = F.one_hot((prev + 1) % self.config.levels, self.config.levels).float() * 50.0
        return logits.view(b, h, w, c, -1).permute(0, 4, 3, 1, 2)  # (B, L, C, H, W)


def test_cached_falls_back_to_naive_for_other_models():
    stub = CountingModel(3, 7)
    assert not CachedSampler.supports(stub)
    assert all(CachedSampler.supports(tiny_model(arch)) for arch in ARCHS)
    out = sample_cached(stub, 2, 3, 4)
    expected = (torch.arange(3 * 4 * 3) % 7).view(3, 4, 3).permute(2, 0, 1)  # (C, H, W)
    assert torch.equal(out, expected.expand(2, -1, -1, -1))
    with pytest.raises(TypeError, match="CachedSampler"):
        CachedSampler(stub, torch.zeros(1, 3, 2, 2, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_on_cuda_equals_cpu(arch):
    model = tiny_model(arch, 3, "source")
    cond = cond_inputs(model)
    cpu = sample_cached(model, N, H, W, generator=torch.Generator().manual_seed(5), **cond)
    gpu = sample_cached(
        model.cuda(), N, H, W, generator=torch.Generator().manual_seed(5), device="cuda", **cond
    )
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu, gpu.cpu())
