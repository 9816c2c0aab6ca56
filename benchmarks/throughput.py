"""Training throughput of the generators: images per second of a full training step.

One step = forward, NLL, backward and an Adam update, on random 28x28 images with
256 levels (batch 64, 2 CPU threads by default). The Row LSTM is 4 layers, hidden
64; Diagonal BiLSTM and PixelCNN get the hidden size that matches its parameter
count. Each configuration runs in its own subprocess so that the reported peak
memory (ru_maxrss, or CUDA max allocated) is its own.

Usage:
    python benchmarks/throughput.py                      # all three archs
    python benchmarks/throughput.py --arch row_lstm --compare-uncropped
    python benchmarks/throughput.py --device cuda --threads 16

Target (issue 3): Row LSTM at least 30 images/s on the 2-core CPU machine.
``--compare-uncropped`` also times the Row LSTM with MaskedConv2d.crop_kernels
off (the whole masked kernel convolved), interleaved with cropped runs, and
prints the speed-up of cropping.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

ARCHS = ("row_lstm", "diagonal_bilstm", "pixelcnn")


def measure(args: argparse.Namespace) -> dict:
    """Run in the child process: time ``--steps`` training steps after a warm-up."""
    import torch

    from rnnexp.models import GeneratorConfig, PixelRNN
    from rnnexp.models.generator import count_parameters, matched_hidden
    from rnnexp.models.masked import MaskedConv2d

    MaskedConv2d.crop_kernels = not args.uncropped

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = GeneratorConfig(arch="row_lstm", levels=256, hidden=64, layers=4)
    hidden = 64
    if args.arch != "row_lstm":
        hidden = matched_hidden(base, count_parameters(base), args.arch)
    config = GeneratorConfig(arch=args.arch, levels=256, hidden=hidden, layers=4)
    model = PixelRNN(config).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (args.batch, 1, 28, 28), device=args.device)

    def step() -> None:
        loss = model.nll(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if args.device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "arch": args.arch,
        "hidden": hidden,
        "params": count_parameters(config),
        "images_per_s": args.batch / statistics.median(times),
        "peak_mb": peak_mb,
    }


def run_child(args: argparse.Namespace, arch: str, uncropped: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--arch", arch, "--device", args.device]
    cmd += ["--threads", str(args.threads), "--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    if uncropped:
        cmd.append("--uncropped")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, action="append")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compare-uncropped", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uncropped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.arch = args.arch[0]
        print(json.dumps(measure(args)))
        return

    print(f"machine: {platform.node()} {platform.machine()}, device {args.device}, ")
    print(f"threads {args.threads}, batch {args.batch}, 28x28, 256 levels, 4 layers")
    for arch in args.arch or ARCHS:
        r = run_child(args, arch)
        print(
            f"{arch:16s} hidden {r['hidden']:4d}  params {r['params']:8,d}  "
            f"{r['images_per_s']:6.1f} images/s  peak memory {r['peak_mb']:7.0f} MB"
        )

    if args.compare_uncropped:
        cropped, whole = [], []
        for _ in range(3):  # interleaved, so load on the machine hits both alike
            cropped.append(run_child(args, "row_lstm")["images_per_s"])
            whole.append(run_child(args, "row_lstm", uncropped=True)["images_per_s"])
        c, w = statistics.median(cropped), statistics.median(whole)
        print(f"row_lstm: cropped kernels {c:.1f} images/s, whole masked kernels {w:.1f}")
        print(f"speed-up of kernel cropping: {c / w:.2f}x")


if __name__ == "__main__":
    main()
