"""Fashion-MNIST: the Row LSTM and the PixelCNN trained for the same wall-clock time.

Reads the recipe ``params/fashion-mnist.yaml`` (Debian's ``dataset-fashion-mnist``,
28x28, 256 levels, a Row LSTM sized for a 2-core CPU) and prepares the data with the
fetch and prepare stages in a temporary folder (nothing is written in the
repository). Each model trains for ``--minutes`` of wall-clock time, validation
included (Lightning's ``max_time``), in epochs of ``--epoch-images`` images drawn
afresh from the train split, validated on ``--val-images`` after each; the
best-validation weights are kept. The PixelCNN gets the hidden size that matches the
Row LSTM's parameter count (``matched_hidden``); its speed is printed beside. Then:
test bits/dim on the whole test split (10,000 images) beside the independent-per-pixel
baseline (add-one-smoothed histogram per pixel, fit on train); the Fréchet distance of
``--samples`` samples in the features of the scoring classifier (the classifier
stage's, trained on the same data), beside the baseline's and real train images'; a
sample grid ``<arch>_samples.png`` and ``fashion.json`` under ``--out``; and a section
ready to paste into benchmarks/RESULTS.md (machine, load average, date, figures).

Usage:
    python benchmarks/fashion.py                       # 60 minutes per model, both
    python benchmarks/fashion.py --minutes 0.5 --images 2000 --val-images 200 \\
        --test-images 500 --samples 16 --set evaluate.classifier_epochs=1   # smoke, ~3 min
    python benchmarks/fashion.py --minutes 240 --patience 5 --set train.accelerator=gpu

Target (Fashion-MNIST issue): with 60 minutes each on the 2-core CPU machine, the Row
LSTM tests at <= 3.5 bits/dim and better than the PixelCNN.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from rnnexp import console
from rnnexp.config import Params, load_params, with_overrides
from rnnexp.data.datamodule import PreparedDataModule
from rnnexp.data.prepare import read_arrays, read_meta, write_prepared
from rnnexp.errors import ConfigError, RnnexpError
from rnnexp.evaluation import likelihood, scores
from rnnexp.evaluation.generation import TaskInfo
from rnnexp.evaluation.images import make_grid
from rnnexp.models.generator import PixelRNN, count_parameters, matched_hidden
from rnnexp.stages import classifier as classifier_stage
from rnnexp.stages import fetch, prepare
from rnnexp.training.checkpoint import load_checkpoint
from rnnexp.training.fit import build_generator
from rnnexp.training.system import PixelRNNSystem
from rnnexp.util.devices import torch_device
from rnnexp.util.threads import torch_threads

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "params" / "fashion-mnist.yaml"
ARCHS = ("row_lstm", "pixelcnn")


def say(line: str) -> None:
    """A progress line on stdout, at once (the run takes hours)."""
    print(line, flush=True)


def baseline_bpd(train: np.ndarray, test: np.ndarray, levels: int) -> float:
    """Test bits/dim of the independent-per-pixel model fit on ``train`` (N, C, H, W).

    Each sub-pixel gets its own add-one-smoothed histogram of levels over the train
    images (:func:`rnnexp.evaluation.likelihood.independent_pixel_nll`).
    """
    dims = int(np.prod(test.shape[1:]))
    return likelihood.bits_per_dim(likelihood.independent_pixel_nll(train, test, levels), dims)


def prepare_data(params: Params, folder: Path, caps: dict[str, int | None]) -> dict:
    """Fetch and prepare ``params.data`` into ``folder``; ``caps``: split -> max images.

    The splits are the prepare stage's (random, by ``data.seed``); a cap keeps the
    first images of a split, which are already in random order. Returns meta.json.
    """
    if params.data.task != "unconditional":
        raise ConfigError(f"data.task: {params.data.task!r}; the benchmark needs unconditional")
    data = prepare.run(fetch.run(params), params)
    for split, cap in caps.items():
        if cap is not None:
            images, labels = data.splits[split]
            data.splits[split] = (images[:cap], None if labels is None else labels[:cap])
    write_prepared(data, folder)
    return read_meta(folder)


def arch_params(params: Params, arch: str, meta: dict) -> Params:
    """``params`` for ``arch``: the recipe's model, or one with as many parameters."""
    if arch == params.model.arch:
        return params
    config = build_generator(params, meta).config
    hidden = matched_hidden(config, count_parameters(config), arch)
    return with_overrides(params, {"model.arch": arch, "model.hidden": hidden})


def train_for(
    params: Params, prepared: Path, workdir: Path, args: argparse.Namespace
) -> tuple[PixelRNN, dict]:
    """Train ``params.model`` for ``args.minutes`` of wall-clock time, in epochs of
    ``args.epoch_images`` images, validating after each; keep the best weights.

    Returns (generator with the best-validation weights, in eval mode, figures).
    """
    t = params.train
    pl.seed_everything(t.seed, workers=True, verbose=False)
    data = PreparedDataModule(prepared, t.batch_size, t.num_workers, seed=t.seed)
    meta = data.meta
    generator = build_generator(params, meta)
    shape = (meta["channels"], meta["height"], meta["width"])
    info = {key: meta[key] for key in ("content_hash", "levels", "task")} | {"shape": shape}
    system = PixelRNNSystem(generator, shape, lr=t.lr, weight_decay=t.weight_decay, data_info=info)
    meter = Meter(params.model.arch)
    best = ModelCheckpoint(workdir, "best", monitor="val/bpd", enable_version_counter=False)
    callbacks: list = [best, meter]
    if t.lr_schedule == "cosine":  # over the time budget, as there is no epoch count
        callbacks.append(TimeCosine(t.lr, args.minutes * 60))
    if args.patience:
        callbacks.append(EarlyStopping(monitor="val/bpd", patience=args.patience))
    batches = max(1, args.epoch_images // t.batch_size)  # an "epoch": this many random batches
    trainer = pl.Trainer(
        max_time=dt.timedelta(minutes=args.minutes), max_epochs=-1, limit_train_batches=batches,
        accelerator=t.accelerator, devices=1, precision=t.precision,
        gradient_clip_val=t.grad_clip or None, logger=False, callbacks=callbacks,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=workdir,
    )  # fmt: skip
    start = time.monotonic()
    trainer.fit(system, datamodule=data)
    seconds = time.monotonic() - start
    if best.best_model_path:
        generator = load_checkpoint(best.best_model_path).generator
    kept = min(system.history, key=lambda row: row["val_bpd"]) if system.history else {}
    c, history = generator.config, system.history
    figures = dict(
        arch=c.arch, hidden=c.hidden, layers=c.layers, parameters=count_parameters(c),
        train_seconds=seconds, validation_seconds=meter.val_seconds, images_seen=meter.images,
        passes=meter.images / len(data.datasets["train"]),
        train_images_per_s=meter.images / max(seconds - meter.val_seconds, 1e-9),
        checks=len(history), best_check=history.index(kept) + 1 if kept else None,
        best_val_bpd=kept.get("val_bpd"), val_curve=[round(r["val_bpd"], 4) for r in history],
    )  # fmt: skip
    return generator.eval(), figures


class TimeCosine(pl.Callback):
    """Cosine learning-rate decay over a wall-clock budget: before every batch, lr x
    (1 + cos(pi x elapsed / budget)) / 2, so it reaches 0 when the time is up."""

    def __init__(self, lr: float, seconds: float) -> None:
        self.lr, self.seconds, self.start = lr, seconds, time.monotonic()

    def on_train_start(self, trainer, module) -> None:
        self.start = time.monotonic()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        done = min((time.monotonic() - self.start) / self.seconds, 1.0)
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = self.lr * 0.5 * (1.0 + math.cos(math.pi * done))


class Meter(pl.Callback):
    """Counts training images and validation time; prints one line per validation."""

    def __init__(self, label: str) -> None:
        self.label, self.images, self.val_seconds = label, 0, 0.0
        self._start = self._val_start = time.monotonic()

    def on_train_start(self, trainer, module) -> None:
        self._start = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.images += len(batch["image"])

    def on_validation_start(self, trainer, module) -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer, module) -> None:
        # after the module's on_validation_epoch_end appended its history row
        self.val_seconds += time.monotonic() - self._val_start
        row = module.history[-1] if module.history else {}
        elapsed = dt.timedelta(seconds=round(time.monotonic() - self._start))
        bpd = row.get("val_bpd", float("nan"))
        say(f"{self.label}: check {len(module.history)}, {self.images:,} images, val {bpd:.4f}"
            f" bits/dim ({elapsed})")  # fmt: skip


def score(
    generator: PixelRNN, prepared: Path, params: Params, classifier: torch.nn.Module,
    real_features: np.ndarray, n_samples: int,
) -> tuple[dict, np.ndarray]:  # fmt: skip
    """Test bits/dim and Fréchet distance of ``generator`` on the prepared test split."""
    test = read_arrays(prepared, "test")
    generator = generator.to(torch_device(params.train.accelerator))
    e = params.evaluate
    start = time.monotonic()
    nats = likelihood.model_nll(generator, test["images"], e.batch_size)
    nll_seconds = time.monotonic() - start
    start = time.monotonic()
    sampling = with_overrides(params, {"evaluate.score_samples": n_samples}).evaluate
    samples, _ = likelihood.model_outputs(generator, TaskInfo(), test, sampling)  # cached sampler
    sample_seconds = time.monotonic() - start
    fake = scores.classifier_features(classifier, samples, e.batch_size)
    bpd = likelihood.bits_per_dim(nats, int(np.prod(test["images"].shape[1:])))
    return dict(
        test_nll_nats=nats, test_bpd=bpd, test_images=len(test["images"]),
        test_seconds=nll_seconds, frechet=scores.frechet_distance(real_features, fake),
        samples=len(samples), sample_seconds=sample_seconds,
    ), samples  # fmt: skip


def machine_facts(threads: int) -> dict:
    """Cores, CPU model, torch threads, versions, date."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(
        node=platform.node(), machine=platform.machine(), cpu=cpu, cores=os.cpu_count(),
        torch_threads=threads, gpu=gpu, python=platform.python_version(),
        torch=torch.__version__, lightning=lightning.__version__,
        date=dt.datetime.now().astimezone().isoformat(timespec="minutes"),
    )  # fmt: skip


def load_average() -> str:
    """``os.getloadavg()`` as ``1/5/15`` minute figures."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


ROW = (
    "| {arch} | {hidden} x {layers} | {parameters:,} | {train_images_per_s:.1f} | "
    "{images_seen:,} ({passes:.2f}) | {checks} ({best_check}) | {best_val_bpd:.4f} | "
    "**{test_bpd:.4f}** | {frechet:.2f} | {test_seconds:.0f} s | {sample_seconds:.0f} s |"
)


def markdown(f: dict) -> str:
    """The figures as a benchmarks/RESULTS.md section."""
    m, base, c, s = f["machine"], f["baseline"], f["classifier"], f["splits"]
    device = f"GPU {m['gpu']}" if m["gpu"] and f["device"] != "cpu" else "CPU only"
    lines = [
        f"## Fashion-MNIST at equal wall-clock time — `python benchmarks/fashion.py {f['args']}`",
        "",
        f"Machine: {m['node']} {m['machine']}, {m['cpu']}, {m['cores']} cores, "
        f"{m['torch_threads']} torch threads, {device}; Python {m['python']}, torch "
        f"{m['torch']}, lightning {m['lightning']}. Date: {m['date']}. Load average "
        f"(1/5/15 min): at the start {f['load_start']}, before each training "
        f"{', '.join(r['load_before'] for r in f['models'])}, at the end {f['load_end']}.",
        "",
        f"Data: {f['data']}, {f['levels']} levels; splits train {s['train']:,} / val "
        f"{s['val']:,} / test {s['test']:,} (the prepare stage's, data.seed). Budget: "
        f"{f['minutes']:g} min of training per model (validation included), epochs of "
        f"{f['epoch_images']:,} random train images, lr {f['lr']:g} {f['schedule']} (cosine: "
        "over the time), the best-validation weights kept. The PixelCNN has the Row LSTM's "
        "parameter count (matched hidden), not its speed.",
        "",
        "| model | hidden x layers | parameters | train images/s | images seen (passes) "
        "| checks (best) | best val bits/dim | **test bits/dim** | Fréchet | test NLL time "
        "| sampling time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(ROW.format(**r) for r in f["models"]),
        f"| independent-per-pixel baseline | | | | | | | {base['test_bpd']:.4f} | "
        f"{base['frechet']:.2f} | | |",
        "",
        f"Test bits/dim over {f['models'][0]['test_images']:,} test images; Fréchet distance "
        f"of {f['samples']:,} samples (temperature 1) vs the test images in the scoring "
        f"classifier's features (test accuracy {c['test_accuracy']:.4f}, {c['seconds']:.0f} s "
        f"to train); real train images vs test: {base['real_train_frechet']:.2f} (the floor). "
        "Validation bits/dim per check: "
        + "; ".join(f"{r['arch']} {r['val_curve']}" for r in f["models"])
        + f". Wall time of the whole run: {f['total_seconds'] / 60:.1f} min.",
    ]
    bpd = {r["arch"]: r["test_bpd"] for r in f["models"]}
    if set(ARCHS) <= set(bpd):
        met = bpd["row_lstm"] <= 3.5 and bpd["row_lstm"] < bpd["pixelcnn"]
        lines.append(
            f"Target (60 min each on the CPU): Row LSTM <= 3.5 bits/dim and better than the "
            f"PixelCNN: {bpd['row_lstm']:.4f} vs {bpd['pixelcnn']:.4f}, "
            f"**{'met' if met else 'not met'}**."
        )
    return "\n".join(lines)


def _positive(kind: type) -> object:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add, count = p.add_argument, _positive(int)
    add("--minutes", type=_positive(float), default=60.0, help="training time per model")
    add("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add("--out", default=None, help="folder for the grids and fashion.json (default: temp)")
    add("--arch", action="append", choices=ARCHS, help="repeatable; default: both")
    add("--images", type=count, default=None, help="cap on train images (smoke runs)")
    add("--val-images", type=count, default=1000, help="val images scored per check")
    add("--test-images", type=count, default=None, help="cap on test images (smoke runs)")
    add("--epoch-images", type=count, default=12800, help="train images per epoch (check)")
    add("--samples", type=count, default=1000, help="samples for the Fréchet distance")
    add("--patience", type=int, default=0, help="stop after N checks without a better val")
    add("--params", default=str(RECIPE), help="params file (default: the recipe)")
    add("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a param of the params file (repeatable)")  # fmt: skip
    return p.parse_args(argv)


def run(args: argparse.Namespace, work: Path, out: Path) -> dict:
    """Prepare, train every arch, score; returns the figures (also in out/fashion.json)."""
    begin = time.monotonic()
    params = load_params(args.params, args.overrides)
    with torch_threads(args.threads) as threads:
        figures = {"machine": machine_facts(threads), "load_start": load_average()}
        prepared = work / "prepared"
        caps = {"train": args.images, "val": args.val_images, "test": args.test_images}
        meta = prepare_data(params, prepared, caps)
        train, test = (read_arrays(prepared, s)["images"] for s in ("train", "test"))
        levels = meta["levels"]
        figures.update(
            data=params.data.path or params.data.url or params.data.source, levels=levels,
            splits=meta["splits"], minutes=args.minutes, epoch_images=args.epoch_images,
            samples=args.samples, args=" ".join(sys.argv[1:]) or "(defaults)",
            lr=params.train.lr, schedule=params.train.lr_schedule,
            device=str(torch_device(params.train.accelerator)),
        )  # fmt: skip
        say(f"data: splits {meta['splits']}, {levels} levels")
        trained = []
        for arch in args.arch or ARCHS:
            p = arch_params(params, arch, meta)
            loadavg = load_average()
            say(f"{arch}: {p.model.hidden}x{p.model.layers}, {args.minutes:g} min (load {loadavg})")
            generator, row = train_for(p, prepared, work / arch, args)
            trained.append((generator, {**row, "load_before": loadavg}))
        start = time.monotonic()
        classifier, info = classifier_stage.run(str(prepared), params)
        clf_seconds = time.monotonic() - start
        figures["classifier"] = {"test_accuracy": info["test_accuracy"], "seconds": clf_seconds}
        real = scores.classifier_features(classifier, test, params.evaluate.batch_size)
        base = scores.independent_pixel_samples(train, levels, args.samples, params.evaluate.seed)
        figures["baseline"] = {
            "test_bpd": baseline_bpd(train, test, levels),
            "frechet": scores.frechet_distance(real, scores.classifier_features(classifier, base)),
            "real_train_frechet": scores.frechet_distance(
                real, scores.classifier_features(classifier, train[: args.samples])
            ),
        }
        make_grid(base[:64], levels, nrow=8).save(out / "baseline_samples.png")
        make_grid(test[:64], levels, nrow=8).save(out / "test_images.png")
        figures["models"] = []
        for generator, row in trained:
            got, samples = score(generator, prepared, params, classifier, real, args.samples)
            make_grid(samples[:64], levels, nrow=8).save(out / f"{row['arch']}_samples.png")
            figures["models"].append({**row, **got})
            say(f"{row['arch']}: test {got['test_bpd']:.4f} bits/dim, Fréchet {got['frechet']:.2f}")
    figures["load_end"] = load_average()
    figures["total_seconds"] = time.monotonic() - begin
    (out / "fashion.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures; 2 on bad input (a message, no traceback)."""
    args = parse_args(argv)
    console.setup()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rnnexp-fashion-out-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="rnnexp-fashion-") as work:
            figures = run(args, Path(work), out)
    except RnnexpError as exc:
        print(f"fashion: {exc}", file=sys.stderr)
        return 2
    print("\n" + markdown(figures) + "\n")
    print(f"grids and fashion.json in {out}")
    return 0


if __name__ == "__main__":
    # Trained as the train stage trains: under tcmalloc where it is installed.
    from rnnexp.util.allocator import rerun_under_tcmalloc

    rerun_under_tcmalloc()
    sys.exit(main())
