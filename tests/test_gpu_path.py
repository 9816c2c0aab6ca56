"""The GPU path, checked as far as this machine allows: mixed precision and torch.compile.

On the CPU: ``bf16-mixed`` trains (autocast on, loss finite and falling); ``16-mixed``
is refused wherever training would run on the CPU (Lightning would switch to bf16 with
only a warning); Dynamo traces every arch's loss to the eager loss and gradients;
``train.compile`` reaches the LightningModule, is refused before any
run opens when inductor has no compiler, and (slow: inductor compiles for minutes on
2 cores) trains with a falling loss into checkpoints an uncompiled ``PixelRNN`` loads
with the compiled model's figures. The CUDA tests skip without a GPU;
``benchmarks/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch._inductor.config
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from rnnexp.cli import main as cli_main
from rnnexp.config import Params, params_to_yaml, with_overrides
from rnnexp.data.datamodule import SplitDataset
from rnnexp.errors import ConfigError, RnnexpError
from rnnexp.models.generator import GeneratorConfig, PixelRNN
from rnnexp.training.checkpoint import load_checkpoint
from rnnexp.training.fit import run_training
from rnnexp.training.system import PixelRNNSystem
from rnnexp.util import devices

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ARCHS = ["row_lstm", "diagonal_bilstm", "pixelcnn"]
STEPS = 8
# run_training's tiny params (conftest's tiny_params) with 1 epoch = 3 training batches
# of 40 and 1 validation batch (no partial batch: no recompiling for a new shape), on
# the CPU, without sample grids or MLflow.
SMALL = ("train.batch_size=40", "train.accelerator=cpu", "train.sample_every=0",
         "tracking.enabled=false")  # fmt: skip


class StepLosses(pl.Callback):
    """The training loss of every optimizer step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit_steps(
    arch: str, accelerator: str, precision: str, steps: int = STEPS
) -> tuple[list[float], set]:
    """Train a tiny generator ``steps`` steps on 32 digits (17 levels, 8x8), overfitting
    them at lr 1e-2; returns the step losses and the dtypes the head computed in."""
    pl.seed_everything(0, verbose=False)
    images = torch.from_numpy(load_digits().images[:32]).long().unsqueeze(1)  # (32, 1, 8, 8)
    config = GeneratorConfig(arch=arch, levels=17, hidden=4, layers=1, head_hidden=8)
    generator = PixelRNN(config)
    dtypes: set[torch.dtype] = set()
    generator.head.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    losses = StepLosses()
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=steps,
        limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[losses],
    )  # fmt: skip
    batches = DataLoader([{"image": image} for image in images], batch_size=8)
    trainer.fit(PixelRNNSystem(generator, (1, 8, 8), lr=1e-2), batches)
    return losses.losses, dtypes


def assert_trains(losses: list[float], steps: int = STEPS) -> None:
    """Every step's loss finite, and the last three steps' mean 2% below the first three's."""
    assert len(losses) == steps
    assert all(math.isfinite(loss) for loss in losses), losses
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.98 * first, losses


# The Diagonal BiLSTM's scan writes into strided ``out=`` views, which Dynamo does not
# trace: it runs eagerly between two graphs (a graph break, not an error).
@pytest.mark.parametrize(
    "arch, fullgraph", [("row_lstm", True), ("pixelcnn", True), ("diagonal_bilstm", False)]
)
def test_compiled_graph_gives_eager_loss_and_gradients(arch, fullgraph):
    """Dynamo traces the loss, the hand-written autograd functions included, to the eager
    loss and gradients; ``fullgraph``: in one graph (a graph break would raise). The
    ``aot_eager`` backend runs the traced graphs without a compiler; inductor's own
    code generation is the slow test below."""
    torch.manual_seed(0)
    config = GeneratorConfig(arch=arch, levels=17, hidden=6, layers=2, head_hidden=8)
    model = PixelRNN(config)
    x = torch.from_numpy(load_digits().images[:4]).long().unsqueeze(1)  # (4, 1, 8, 8)
    loss = model.nll(x).mean()
    want = torch.autograd.grad(loss, list(model.parameters()))
    torch._dynamo.reset()
    nll = torch.compile(
        lambda images: model.nll(images).mean(), backend="aot_eager", fullgraph=fullgraph
    )
    compiled_loss = nll(x)
    got = torch.autograd.grad(compiled_loss, list(model.parameters()))
    torch.testing.assert_close(compiled_loss, loss)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_mixed_trains_on_the_cpu(arch):
    losses, dtypes = fit_steps(arch, "cpu", "bf16-mixed")
    assert dtypes == {torch.bfloat16}  # autocast was on: bf16-mixed is not a no-op here
    assert_trains(losses)


@CUDA
@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16),
                                              ("16-mixed", torch.float16)])  # fmt: skip
@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_precision_trains_on_cuda(arch, precision, dtype):
    # 16-mixed's GradScaler skips the first steps while it lowers its scale from 2^16
    losses, dtypes = fit_steps(arch, "cuda", precision, steps=3 * STEPS)
    assert dtypes == {dtype}
    assert_trains(losses, steps=3 * STEPS)


def test_16_mixed_is_refused_where_training_runs_on_the_cpu(monkeypatch):
    with pytest.raises(ConfigError, match=r"train.precision: '16-mixed' \(float16 autocast\)"):
        with_overrides(Params(), {"train.precision": "16-mixed", "train.accelerator": "cpu"})
    # auto means the CPU only on a machine without a GPU: checked before a run opens
    fp16 = with_overrides(Params(), {"train.precision": "16-mixed"}).train
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    with pytest.raises(RnnexpError, match="train.accelerator 'auto' found no GPU") as info:
        devices.check_training_machine(fp16)
    assert str(info.value).startswith("train.precision: '16-mixed'")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    devices.check_training_machine(fp16)  # a CUDA machine trains it


def test_compile_reaches_the_training_steps(monkeypatch, tmp_path, prepared_dir, tiny_params):
    """run_training hands train.compile to the system, which compiles the generator's NLL
    (a spy stands in for torch.compile: the real one is the slow test below)."""
    compiled, calls = [], []

    def spy(fn):
        compiled.append(fn)
        return lambda *args, **kwargs: calls.append(1) or fn(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(*SMALL, "train.compile=true", "train.max_epochs=1")
    result = run_training(params, prepared_dir, tmp_path / "models", save_checkpoints=False)
    assert result.epochs == 1
    assert len(compiled) == 1 and compiled[0].__func__ is PixelRNN.nll
    assert len(calls) == 3 + 1  # 120 training images in batches of 40, 40 validation images


@pytest.mark.slow  # inductor's first compilation of a training step: 1-2 min on 2 cores
@pytest.mark.skipif(
    devices.compile_problem(torch.device("cpu")) is not None,
    reason=f"torch.compile cannot work here: {devices.compile_problem(torch.device('cpu'))}",
)
def test_compiled_training_falls_and_its_checkpoint_loads_uncompiled(
    tmp_path, prepared_dir, tiny_params
):
    params = tiny_params(*SMALL, "train.compile=true", "train.max_epochs=2")
    result = run_training(params, prepared_dir, tmp_path / "models")
    raw = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert not [key for key in raw["state_dict"] if "_orig_mod" in key]
    last = load_checkpoint(result.last_checkpoint)  # strict: every key must match
    train = [row["train_nll"] for row in last.history]
    assert all(math.isfinite(v) for v in train) and train[1] < train[0], train
    # The compiled model's validation NLL of the last epoch, from the saved weights eagerly
    assert type(last.generator) is PixelRNN
    val = DataLoader(SplitDataset(prepared_dir, "val"), batch_size=40)
    with torch.no_grad():
        nll = torch.cat([last.generator.nll(batch["image"]) for batch in val]).double().mean()
    assert float(nll) == pytest.approx(last.history[-1]["val_nll"], rel=1e-4)


def test_compile_without_a_compiler_is_refused_before_a_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-g++")))
    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)  # no conda download
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(params_to_yaml(Params()))
    argv = ["train", "--set", "train.compile=true", "--set", "train.accelerator=cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "train.compile: true, but torch.compile cannot build kernels for the CPU" in err
    assert "no C++ compiler" in err
    assert not db.exists() and not (tmp_path / "models").exists()  # no run, no output


def test_compile_on_cuda_needs_triton(monkeypatch):
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert "Triton is not installed" in devices.compile_problem(torch.device("cuda"))
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    assert devices.compile_problem(torch.device("cuda")) is None
