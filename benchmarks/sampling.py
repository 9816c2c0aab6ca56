"""Sampling speed: the naive sampler (one full forward pass per sub-pixel) vs the cached one.

Both draw a batch of 16 28x28 images with 256 levels from a randomly initialised
4-layer generator (the naive sampler on ``--threads`` CPU threads, 2 by default; the
cached one runs on one thread whatever the setting, see ``sample_cached``): the Row
LSTM has hidden 64; the Diagonal BiLSTM and PixelCNN get the hidden size that matches
its parameter count (``matched_hidden``). Each measurement runs in its own
subprocess, so the peak memory it reports (``ru_maxrss``, or
``torch.cuda.max_memory_allocated`` on a GPU) is its own; the resident memory just
before sampling is printed next to it.

The naive sampler runs one full forward pass per sub-pixel, a constant cost, so
``--naive-rows R`` times only its first ``R`` rows (the rest of the image is given
as known, which the sampler skips without a forward pass) and extrapolates
linearly to the whole image; the output says so. The cached sampler is always
timed in full, ``--cached-runs`` times (the median counts), then once more in its
instrumented mode for the time split: per-pixel input convolution, layers and
head, per-row work, softmax and sampling (drawing and writing the level), and the
rest (the loop itself). Wall and process time are both printed: on a busy machine
the process time is the steadier figure, but only the wall time counts the waiting
of a second thread.

Usage:
    python benchmarks/sampling.py --arch row_lstm --naive-rows 4
    python benchmarks/sampling.py                      # all three archs, naive in full
    python benchmarks/sampling.py --device cuda --threads 16

Target (issue 15): cached sampling at least 300x faster than naive for every arch,
both timed in full for the Row LSTM (the ideal is about H*W = 784x: one pixel's work
per pixel instead of a whole image's).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

ARCHS = ("row_lstm", "diagonal_bilstm", "pixelcnn")


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args: argparse.Namespace) -> dict:
    """Run in the child process: one sampling run of ``args.sampler``."""
    import torch

    from rnnexp.models import GeneratorConfig, PixelRNN
    from rnnexp.models.generator import count_parameters, matched_hidden
    from rnnexp.models.sampling import sample_cached, sample_naive

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = GeneratorConfig(arch="row_lstm", levels=args.levels, hidden=64, layers=4)
    hidden = 64
    if args.arch != "row_lstm":
        hidden = matched_hidden(base, count_parameters(base), args.arch)
    config = GeneratorConfig(arch=args.arch, levels=args.levels, hidden=hidden, layers=4)
    model = PixelRNN(config).to(args.device).eval()
    n, size = args.batch, args.size
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None

    kwargs: dict = {}
    rows = size
    if args.sampler == "naive":
        sampler = sample_naive
        if args.naive_rows is not None and args.naive_rows < size:
            rows = args.naive_rows
            known = torch.zeros(n, 1, size, size, dtype=torch.long)
            mask = torch.zeros(n, 1, size, size, dtype=torch.bool)
            mask[:, :, rows:] = True  # given in every image: no forward pass, no draw
            kwargs = dict(known=known, known_mask=mask)
    else:
        sampler = sample_cached

    def draw(**extra):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        images = sampler(
            model,
            n,
            size,
            size,
            generator=torch.Generator().manual_seed(0),
            device=args.device,
            **kwargs,
            **extra,
        )
        sync()
        return images, time.perf_counter() - wall, time.process_time() - cpu

    # Warm-up (allocator, kernels): a tiny sample with the same model.
    sampler(model, n, 2, 2, generator=torch.Generator().manual_seed(1), device=args.device)
    sync()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before_mb = _peak_mb(args.device) if not args.device.startswith("cuda") else 0.0
    runs = [draw() for _ in range(args.cached_runs if args.sampler == "cached" else 1)]
    images = runs[0][0]
    walls = sorted(r[1] for r in runs)
    cpus = sorted(r[2] for r in runs)
    result = {
        "arch": args.arch,
        "sampler": args.sampler,
        "hidden": hidden,
        "params": count_parameters(config),
        "seconds": walls[len(walls) // 2],  # the median run
        "min_seconds": walls[0],
        "cpu_seconds": cpus[len(cpus) // 2],
        "runs": len(runs),
        "rows": rows,
        "peak_mb": _peak_mb(args.device),
        "before_mb": before_mb,
        "row_sums": images.sum(dim=(0, 1, 3)).tolist(),  # to compare the two samplers' images
    }
    for key in ("seconds", "min_seconds", "cpu_seconds"):
        result["full_" + key] = result[key] * size / rows
    if args.sampler == "cached":
        timings: dict[str, float] = {}
        result["split_seconds"] = draw(timings=timings)[1]
        result["split"] = timings
    return result


def run_child(args: argparse.Namespace, arch: str, sampler: str) -> dict:
    cmd = [sys.executable, __file__, "--child", sampler, "--arch", arch]
    cmd += ["--device", args.device, "--threads", str(args.threads), "--batch", str(args.batch)]
    cmd += ["--size", str(args.size), "--levels", str(args.levels)]
    cmd += ["--cached-runs", str(args.cached_runs)]
    if args.naive_rows is not None:
        cmd += ["--naive-rows", str(args.naive_rows)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, action="append", help="repeatable; default all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument("--levels", type=int, default=256)
    parser.add_argument(
        "--naive-rows",
        type=int,
        default=None,
        metavar="R",
        help="time only the first R rows of the naive sampler and extrapolate linearly",
    )
    parser.add_argument(
        "--cached-runs", type=int, default=3, metavar="N", help="timed runs of the cached sampler"
    )
    parser.add_argument("--child", choices=("naive", "cached"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_rows is not None and args.naive_rows < 1:
        parser.error(f"--naive-rows must be >= 1, got {args.naive_rows}")
    if args.cached_runs < 1:
        parser.error(f"--cached-runs must be >= 1, got {args.cached_runs}")
    if args.child:
        args.arch = (args.arch or ["row_lstm"])[0]
        args.sampler = args.child
        print(json.dumps(measure(args)))
        return

    s = args.size
    print(f"machine: {platform.node()} {platform.machine()}, device {args.device}, load {_load()}")
    print(
        f"threads {args.threads} (naive), batch {args.batch}, {s}x{s} grey, {args.levels} levels, "
        "4 layers"
    )
    memory = "CUDA max allocated" if args.device.startswith("cuda") else "ru_maxrss"
    for arch in args.arch or ARCHS:
        naive = run_child(args, arch, "naive")
        cached = run_child(args, arch, "cached")
        print(f"{arch}: hidden {naive['hidden']}, params {naive['params']:,d}")
        if naive["rows"] < s:
            how = (
                f"EXTRAPOLATED from the first {naive['rows']} of {s} rows "
                f"({naive['seconds']:.1f} s measured x {s}/{naive['rows']})"
            )
        else:
            how = "measured in full"
        runs = cached["runs"]
        many = f"median of {runs} runs, min {cached['min_seconds']:.2f} s" if runs > 1 else ""
        for r, note in ((naive, how), (cached, f"measured in full; {many}".rstrip("; "))):
            before = f" (before sampling {r['before_mb']:.0f} MB)" if r["before_mb"] else ""
            print(
                f"  {r['sampler']:6s} {r['full_seconds']:9.2f} s wall, "
                f"{r['full_cpu_seconds']:9.2f} s process  {note}; "
                f"peak memory {r['peak_mb']:.0f} MB {memory}{before}"
            )
        r = naive["rows"]
        same = "yes" if naive["row_sums"][:r] == cached["row_sums"][:r] else "NO"
        print(f"  same images (row sums, first {r} rows, same seed): {same}")
        _print_split(cached["split"], cached["split_seconds"])
        ratio = naive["full_seconds"] / cached["full_seconds"]
        cpu_ratio = naive["full_cpu_seconds"] / cached["full_cpu_seconds"]
        print(
            f"  cached is {ratio:.0f}x faster than naive (wall; {cpu_ratio:.0f}x in process "
            f"time; ideal about {s * s}x)"
        )


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _print_split(split: dict[str, float], total: float) -> None:
    """The cached sampler's time split (instrumented run), in the order of a step."""
    names = {
        "rows": "per row (layers' row terms, right-to-left passes, input rows)",
        "input": "input conv at the pixel",
        "layers": "layers at the pixel",
        "head": "head at the pixel",
        "softmax": "softmax (cumulative, float64)",
        "sampling": "sampling (draw, write the level)",
    }
    print(f"  cached time split (instrumented run, {total:.2f} s wall):")
    for key, label in names.items():
        seconds = split.get(key, 0.0)
        print(f"    {label:62s} {seconds * 1e3:7.1f} ms {100 * seconds / total:5.1f}%")
    rest, label = total - sum(split.values()), "the rest (loop, yields, timers)"
    print(f"    {label:62s} {rest * 1e3:7.1f} ms {100 * rest / total:5.1f}%")


if __name__ == "__main__":
    main()
