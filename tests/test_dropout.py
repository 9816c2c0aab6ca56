"""Tests of the generators' dropout (``GeneratorConfig.dropout``).

Each layer drops on its output path before the residual add (Row LSTM and
Diagonal BiLSTM: ``x + out(dropout(h))``; PixelCNN: on the residual branch).
Invariants checked here, for every arch:

- dropout is element-wise, so the model stays causal in train mode;
- train mode with ``p > 0`` is random, eval mode is not, and ``p = 0`` is exactly
  the model without dropout (same initial weights, same state_dict keys, no random
  numbers drawn, train == eval);
- sampling has eval semantics: cached == naive for a ``p > 0`` model, and both
  equal the samples of the same weights without dropout;
- old config dicts (no ``dropout`` key) load with ``p = 0``; bad values raise.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_architectures import arch_model, strictly_earlier
from test_models import dependence, without_dead_units
from test_sampling import N, cond_inputs, draw_both, tiny_model

from rnnexp.models import ARCHS, GeneratorConfig, PixelRNN
from rnnexp.models.cached import CachedSampler
from rnnexp.models.sampling import sample_cached


def images(model: PixelRNN, n: int = 4, h: int = 5, w: int = 6, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.levels, (n, model.config.channels, h, w), generator=g)


def with_weights_of(model: PixelRNN, **changes) -> PixelRNN:
    """A model of ``model``'s config with ``changes``, holding ``model``'s weights (strict)."""
    other = PixelRNN(GeneratorConfig.from_dict({**model.config.to_dict(), **changes}))
    other.load_state_dict(model.state_dict(), strict=True)
    return other.to(next(model.parameters()).dtype)


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_in_train_mode_with_dropout(arch):
    h, w, c = 3, 4, 3  # RGB: the colour groups' masks matter too
    model = arch_model(arch, c, dropout=0.5).double().train()
    without_dead_units(model)  # leaky ReLUs: every structural path shows in the gradient
    # The masks are really drawn in this mode: two passes differ.
    xs = torch.rand(2, c, h, w, dtype=torch.float64) * 2 - 1
    assert not torch.equal(model.forward_scaled(xs), model.forward_scaled(xs))
    dep = dependence(model, h, w)  # seeds torch itself: a fixed dropout mask
    assert model.training
    assert not dep[~strictly_earlier(h, w, c)].any(), (
        "with dropout, a logit depends on its own or a later (pixel, channel)"
    )
    # Dropout thins paths but the model still sees its neighbours (some image keeps them).
    assert dep.sum() > h * w * c


# --------------------------------------------------------------------------- train / eval


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_is_random_in_train_mode_only(arch):
    model = arch_model(arch, 3, dropout=0.5)
    x = images(model)
    with torch.no_grad():
        a, b = model.train()(x), model(x)
        assert not torch.equal(a, b)  # a new mask each pass
        e1, e2 = model.eval()(x), model(x)
    assert torch.equal(e1, e2)
    assert not torch.equal(a, e1)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_drops_on_its_output_path(arch):
    model = arch_model(arch, 1, dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == model.config.layers  # one per layer, on the residual branch
    assert all(d.p == 0.3 for d in drops)
    # With one layer's dropout at p = 1 in train mode, all that reaches the output
    # 1x1 conv is zero: the layer returns its input plus that conv's bias, exactly.
    layer = model.layers[0]
    out = layer.expand if arch == "pixelcnn" else layer.out
    layer.drop.p = 1.0
    z = torch.randn(2, 2 * model.config.hidden, 4, 5)
    with torch.no_grad():
        assert torch.equal(layer.train()(z), z + out.bias.view(1, -1, 1, 1))
        assert not torch.allclose(layer.eval()(z), z + out.bias.view(1, -1, 1, 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_dropout_is_the_model_without_dropout(arch):
    old = arch_model(arch, 3, seed=5)  # built without the field
    zero = arch_model(arch, 3, seed=5, dropout=0.0)
    some = arch_model(arch, 3, seed=5, dropout=0.4)
    assert old.config.dropout == 0.0
    # nn.Dropout draws nothing at construction and has no state: the same initial
    # weights under the same seed, and the same state_dict keys.
    for m in (zero, some):
        assert m.state_dict().keys() == old.state_dict().keys()
        for key, value in old.state_dict().items():
            assert torch.equal(m.state_dict()[key], value), key
    x = images(old)
    with torch.no_grad():
        reference = old.eval()(x)
        rng = torch.get_rng_state()
        trained = zero.train()(x)
        assert torch.equal(torch.get_rng_state(), rng)  # p = 0 draws no random numbers
        assert torch.equal(trained, reference)
        assert torch.equal(some.eval()(x), reference)  # eval ignores p


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_sampling_equals_naive_with_dropout(arch):
    model = tiny_model(arch, 3, "class", dropout=0.5).train()
    cond = cond_inputs(model)
    a, b, s1, s2 = draw_both(model, height=3, width=4, **cond)
    assert torch.equal(a, b)
    assert torch.equal(s1, s2)  # the same random numbers were consumed
    assert model.training  # the samplers restore the mode
    assert a.unique().numel() > 2  # not a degenerate model that always draws one level
    # Sampling has eval semantics: the same weights without dropout draw the same images.
    plain = with_weights_of(model, dropout=0.0)
    g = torch.Generator().manual_seed(11)  # draw_both's seed
    assert torch.equal(sample_cached(plain, N, 3, 4, generator=g, **cond), a)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_steps_have_eval_semantics_whatever_the_mode(arch):
    model = tiny_model(arch, 3, dropout=0.5)
    # Used directly on a model left in train mode, the sampler still never drops: its
    # logits are those of a full eval-mode pass (x is not changed: no put).
    x = images(model, n=3, h=3, w=4)
    sampler = CachedSampler(model.train(), x.clone())
    with torch.no_grad():
        full = model.eval()(x)
        model.train()
        for i, j, c, logits in sampler.steps():
            torch.testing.assert_close(logits, full[:, :, c, i, j], atol=1e-10, rtol=0)


# --------------------------------------------------------------------------- config


def test_old_config_dicts_load_without_dropout():
    old = {
        "arch": "diagonal_bilstm",
        "channels": 1,
        "levels": 17,
        "hidden": 8,
        "layers": 2,
        "kernel": 3,
        "input_kernel": 7,
        "head_hidden": 16,
        "num_classes": 0,
        "source_channels": 0,
    }
    cfg = GeneratorConfig.from_dict(old)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    assert cfg.to_dict() == {**old, "dropout": 0.0}


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 0.999])
def test_dropout_values_round_trip(value):
    cfg = GeneratorConfig(arch="pixelcnn", dropout=value)
    assert isinstance(cfg.dropout, float) and cfg.dropout == value
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("value", [1.0, 1, -0.1, True, False, math.nan, math.inf, "0.1", None])
def test_bad_dropout_values_raise(value):
    with pytest.raises(ValueError, match="dropout"):
        GeneratorConfig(dropout=value)
    with pytest.raises(ValueError, match="dropout"):
        GeneratorConfig.from_dict({"hidden": 8, "dropout": value})
