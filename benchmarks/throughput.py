"""Training throughput of the generators: images per second of a full training step.

One step = forward, NLL, backward and an Adam update, on random 28x28 images with
256 levels (batch 64, 2 CPU threads by default). The Row LSTM is 4 layers, hidden
64 (``--layers``, ``--hidden``); Diagonal BiLSTM and PixelCNN get the hidden size
that matches its parameter count. Each measurement runs in its own subprocess, so
that the reported peak memory (ru_maxrss, or CUDA max allocated) is its own, and
the configurations are measured in interleaved rounds, so that the machine's load
hits them alike; the figures are medians over the rounds.

Besides our three generators it times, in the same rounds:

- ``plain``: a plain Row LSTM written below, independently of ``rnnexp`` (PyTorch
  convolutions, the textbook row loop), same sizes: the reference the issue asks
  our Row LSTM to be measured against;
- with ``--against REV``: our generators as they were at git revision ``REV``
  (``git archive`` of ``rnnexp/`` into a temporary folder), for before/after
  ratios of an optimisation in one run.

Every process runs under tcmalloc where it is installed, as the training stages do
(:mod:`rnnexp.util.allocator`); ``--allocator both`` also times ours under the C
library's malloc (version ``now/system``), ``--allocator system`` only that.

Usage:
    python benchmarks/throughput.py                         # all archs + plain, 3 rounds
    python benchmarks/throughput.py --arch row_lstm --arch diagonal_bilstm --rounds 5
    python benchmarks/throughput.py --against c609bea       # before/after ratios
    python benchmarks/throughput.py --arch row_lstm --allocator both  # tcmalloc's gain
    python benchmarks/throughput.py --device cuda --threads 16
    python benchmarks/throughput.py --arch row_lstm --hidden 32 --layers 3  # Fashion recipe

Targets (issue 15): Row LSTM at least 50 images/s on a quiet 2-core VM, with its
ratio to ``plain``; Diagonal BiLSTM at least 0.6x the Row LSTM, at most 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ("row_lstm", "diagonal_bilstm", "pixelcnn")
REPO = Path(__file__).resolve().parents[1]


def plain_row_lstm(levels: int = 256, hidden: int = 64, layers: int = 4):
    """A plain Row LSTM generator (PixelRNN section 3.1), written for reference only.

    Masked 7x7 input convolution (mask A), ``layers`` Row LSTM layers (masked 1x3
    input-to-state, 1x3 state-to-state over the previous row, residual 1x1 output),
    ReLU-1x1-ReLU-1x1 head; grey images. Masks are applied by multiplying weights.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    def causal_mask(k: int, include_centre: bool) -> torch.Tensor:
        mask = torch.ones(k, k)
        mask[k // 2, k // 2 + int(include_centre) :] = 0
        mask[k // 2 + 1 :] = 0
        return mask

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.i2s = nn.Conv2d(2 * hidden, 4 * hidden, (1, 3), padding=(0, 1))
            self.register_buffer("i2s_mask", torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3))
            self.s2s = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)
            self.out = nn.Conv2d(hidden, 2 * hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gates = F.conv2d(x, self.i2s.weight * self.i2s_mask, self.i2s.bias, padding=(0, 1))
            b, _, rows, width = gates.shape
            h = c = x.new_zeros(b, hidden, width)
            hs = []
            for r in range(rows):
                i, f, o, g = (gates[:, :, r] + self.s2s(h)).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                hs.append(h)
            return x + self.out(torch.stack(hs, dim=2))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Conv2d(1, 2 * hidden, 7, padding=3)
            self.register_buffer("inp_mask", causal_mask(7, include_centre=False))
            self.layers = nn.Sequential(*(Layer() for _ in range(layers)))
            self.head = nn.Sequential(
                nn.ReLU(), nn.Conv2d(2 * hidden, 64, 1), nn.ReLU(), nn.Conv2d(64, levels, 1)
            )

        def nll(self, x: torch.Tensor) -> torch.Tensor:
            scaled = x.float() * (2.0 / (levels - 1)) - 1.0
            z = F.conv2d(scaled, self.inp.weight * self.inp_mask, self.inp.bias, padding=3)
            logits = self.head(self.layers(z))  # (B, L, H, W)
            return F.cross_entropy(logits, x[:, 0], reduction="none").sum(dim=(1, 2))

    return Net()


def measure(args: argparse.Namespace) -> dict:
    """Run in the child process: time ``--steps`` training steps after a warm-up."""
    import torch

    from rnnexp.models import GeneratorConfig, PixelRNN
    from rnnexp.models.generator import count_parameters, matched_hidden

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = {"levels": 256, "hidden": args.hidden, "layers": args.layers}
    base = GeneratorConfig(arch="row_lstm", **size)
    if args.arch == "plain":
        model, hidden = plain_row_lstm(**size), args.hidden
    else:
        hidden = args.hidden
        if args.arch != "row_lstm":
            hidden = matched_hidden(base, count_parameters(base), args.arch)
        model = PixelRNN(GeneratorConfig(**{**size, "arch": args.arch, "hidden": hidden}))
    model = model.to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (args.batch, 1, 28, 28), device=args.device)

    def step() -> None:
        loss = model.nll(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if args.device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # As rnnexp.util.allocator.allocator_in_use, which the revision measured may lack.
    with open("/proc/self/maps", encoding="utf-8") as maps:
        allocator = "tcmalloc" if "libtcmalloc" in maps.read() else "system"
    return {
        "allocator": allocator,
        "hidden": hidden,
        "params": sum(p.numel() for p in model.parameters()),
        "images_per_s": args.batch / statistics.median(times),
        "peak_mb": peak_mb,
    }


def run_child(args: argparse.Namespace, arch: str, code: Path, tcmalloc: str | None) -> dict:
    """One measurement in a fresh process, importing ``rnnexp`` from ``code``, with
    the ``tcmalloc`` library preloaded (None: the C library's malloc)."""
    cmd = [sys.executable, __file__, "--child", "--arch", arch, "--device", args.device]
    cmd += ["--threads", str(args.threads), "--batch", str(args.batch)]
    cmd += ["--hidden", str(args.hidden), "--layers", str(args.layers)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("LD_PRELOAD", None)
    if tcmalloc:
        env["LD_PRELOAD"] = tcmalloc
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def export_revision(rev: str, into: Path) -> Path:
    """``rnnexp/`` as it was at git revision ``rev``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "rnnexp"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=(*ARCHS, "plain"), action="append")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64, help="the Row LSTM's hidden size")
    parser.add_argument("--layers", type=int, default=4, help="layers of every generator")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--against", metavar="REV", help="also time rnnexp at git revision REV")
    parser.add_argument(
        "--allocator",
        choices=("tcmalloc", "system", "both"),
        default="tcmalloc",
        help="malloc of the measured processes (tcmalloc: where installed, as training runs)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.arch = args.arch[0]
        print(json.dumps(measure(args)))
        return

    archs = args.arch or [*ARCHS, "plain"]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, device ")
    print(f"{args.device}, threads {args.threads}, batch {args.batch}, 28x28, 256 levels, ")
    print(f"Row LSTM {args.layers} x {args.hidden} (others matched in parameters); ")
    print(f"{args.rounds} interleaved rounds of {args.steps} steps")
    print(f"load average before: {load_average()}")
    sys.path.insert(0, str(REPO))
    from rnnexp.util.allocator import tcmalloc_for_training

    # The rule the training stages follow (RNNEXP_ALLOCATOR=system included).
    tcmalloc = tcmalloc_for_training() if args.allocator != "system" else None
    print(f"allocator: {tcmalloc or 'the C library malloc'}")
    with tempfile.TemporaryDirectory() as tmp:
        configs = [(arch, "now", REPO, tcmalloc) for arch in archs]
        if args.allocator == "both" and tcmalloc:
            configs += [(a, "now/system", REPO, None) for a in archs if a != "plain"]
        if args.against:
            old = export_revision(args.against, Path(tmp))
            configs += [(a, args.against, old, tcmalloc) for a in archs if a != "plain"]
        results: dict[tuple[str, str], list[dict]] = {(a, v): [] for a, v, _, _ in configs}
        for _ in range(args.rounds):
            for arch, version, code, preload in configs:
                results[arch, version].append(run_child(args, arch, code, preload))
    print(f"load average after: {load_average()}")

    speed = {k: statistics.median(r["images_per_s"] for r in rs) for k, rs in results.items()}
    for (arch, version), rs in results.items():
        runs = ", ".join(f"{r['images_per_s']:.1f}" for r in rs)
        print(
            f"{arch:16s} {version:10s} {rs[0]['allocator']:8s} "
            f"hidden {rs[0]['hidden']:4d}  params {rs[0]['params']:8,d}  "
            f"{speed[arch, version]:6.1f} images/s (runs {runs})  "
            f"peak memory {max(r['peak_mb'] for r in rs):7.0f} MB"
        )
    if ("row_lstm", "now") in speed:
        row = speed["row_lstm", "now"]
        for arch in ("plain", "diagonal_bilstm", "pixelcnn"):
            if (arch, "now") in speed:
                print(f"ratio row_lstm / {arch}: {row / speed[arch, 'now']:.2f}")
        if ("diagonal_bilstm", "now") in speed:
            print(f"ratio diagonal_bilstm / row_lstm: {speed['diagonal_bilstm', 'now'] / row:.2f}")
    for other, what in (("now/system", "with tcmalloc"), (args.against, f"since {args.against}")):
        for arch in archs:
            if other and (arch, other) in speed:
                ratio = speed[arch, "now"] / speed[arch, other]
                print(f"speed-up of {arch} {what}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
