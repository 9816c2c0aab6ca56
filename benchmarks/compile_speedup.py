"""Speed-up of ``torch.compile`` (``train.compile``) on a full training step.

One step = the generator's NLL, backward and an Adam update, as ``PixelRNNSystem``
trains with ``train.compile: true`` (the NLL compiled, the module left as it is). The
model is throughput.py's: a Row LSTM of 4 layers, hidden 64, 28x28, 256 levels, batch
64; the Diagonal BiLSTM and PixelCNN get the hidden size matching its parameter count.
The images are smooth random ramps, so that the printed losses show training at work.

Per arch: the eager and the compiled model start from the same weights; the first
compiled steps (``--warmup``) include the compilation, timed apart; then eager and
compiled blocks of ``--steps`` steps alternate for ``--rounds`` rounds, so that the
machine's load hits both alike, and the medians give the ratio. Each arch prints one
JSON line as soon as it is done (a timeout keeps the finished ones).

Usage:
    python benchmarks/compile_speedup.py --device cuda --threads 16
    python benchmarks/compile_speedup.py --arch row_lstm --bf16     # bf16 autocast, both
    python benchmarks/compile_speedup.py --device cuda --bf16 --eager-only  # bf16 losses
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnnexp.models.generator import (  # noqa: E402
    ARCHS,
    GeneratorConfig,
    PixelRNN,
    count_parameters,
    matched_hidden,
)


def ramps(batch: int, size: int, levels: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch, 1, size, size)`` levels: a random plane a*i + b*j + c per image, plus noise."""
    a, b, c = torch.rand(3, batch, 1, 1, generator=gen)
    grid = torch.arange(size, dtype=torch.float32) / max(size - 1, 1)
    plane = (a - 0.5) * grid[:, None] + (b - 0.5) * grid[None, :] + c  # (B, S, S)
    noisy = plane + 0.02 * torch.randn(plane.shape, generator=gen)
    return (noisy.clamp(0, 1) * (levels - 1)).round().long().unsqueeze(1)


def build(arch: str, levels: int, seed: int) -> PixelRNN:
    base = GeneratorConfig(arch="row_lstm", levels=levels, hidden=64, layers=4)
    hidden = 64 if arch == "row_lstm" else matched_hidden(base, count_parameters(base), arch)
    torch.manual_seed(seed)
    return PixelRNN(GeneratorConfig(arch=arch, levels=levels, hidden=hidden, layers=4))


def measure(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    eager = build(arch, args.levels, seed=0).to(device)
    x = ramps(args.batch, args.size, args.levels, torch.Generator().manual_seed(0)).to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())  # fmt: skip
    modes = {"eager": (eager, eager.nll)}
    if not args.eager_only:
        twin = build(arch, args.levels, seed=0).to(device)
        twin.load_state_dict(eager.state_dict())
        modes["compiled"] = (twin, torch.compile(twin.nll))
    optimizers = {
        m: torch.optim.Adam(model.parameters(), lr=3e-3) for m, (model, _) in modes.items()
    }
    losses: dict[str, list[float]] = {m: [] for m in modes}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def steps(mode: str, n: int) -> float:
        _, nll = modes[mode]
        opt = optimizers[mode]
        sync()
        start = time.perf_counter()
        for _ in range(n):
            with autocast:
                loss = nll(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[mode].append(loss.item())  # a sync per step, in both modes alike
        sync()
        return time.perf_counter() - start

    result: dict = {"arch": arch, "device": str(device), "bf16": args.bf16}
    if "compiled" in modes:
        with torch.no_grad():  # same weights: the compiled NLL must agree with eager
            e, c = eager.nll(x), modes["compiled"][1](x)
        result["max_rel_diff"] = float(((c - e).abs() / e.abs()).max())
    for mode in modes:  # first steps: compilation, cudnn autotuning, allocator growth
        result[f"{mode}_warmup_s"] = round(steps(mode, args.warmup), 2)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            times[mode].append(steps(mode, args.steps))
    for mode in modes:
        result[f"{mode}_images_per_s"] = round(
            args.steps * args.batch / statistics.median(times[mode]), 1
        )
        result[f"{mode}_loss_first_last"] = [round(losses[mode][0], 2), round(losses[mode][-1], 2)]
        result[f"{mode}_loss_finite"] = all(math.isfinite(v) for v in losses[mode])
    if "compiled" in modes:
        result["speedup"] = round(result["compiled_images_per_s"] / result["eager_images_per_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", action="append", choices=ARCHS, help="repeatable; default all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument("--levels", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per mode")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both modes")
    parser.add_argument("--eager-only", action="store_true", help="no compiled model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    size = f"batch {args.batch}, {args.size}x{args.size}, {args.levels} levels"
    print(f"# compile_speedup: {name}, torch {torch.__version__}, {args.threads} threads, {size}")
    for arch in args.arch or ("row_lstm", "pixelcnn", "diagonal_bilstm"):
        try:
            result = measure(arch, args, device)
        except Exception as exc:  # one arch failing to compile must not hide the others
            result = {"arch": arch, "error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(result), flush=True)
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
