"""The ``rnnexp`` command: one subcommand per DVC stage, plus ``sample``.

Each stage entry point is thin: parse arguments, load and validate params (before
any work or MLflow run starts), call a pure function, write outputs atomically,
log to MLflow through :mod:`rnnexp.tracking`. Errors the user can fix print one
clear message and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rnnexp.config import Params, load_params
from rnnexp.errors import RnnexpError

CLASSIFIER_SEED = 0  # the scoring classifier is fixed per dataset, not per experiment


def _cmd_fetch(args: argparse.Namespace, params: Params) -> None:
    from rnnexp import tracking
    from rnnexp.data.sources import fetch, write_raw

    d = params.data
    with tracking.tracked_run(params, "fetch") as run:
        raw = fetch(d.source, d.path, d.url, d.sha256, d.image_size, download_dir=args.downloads)
        write_raw(raw, args.out)
        run.log_metrics({"images": len(raw.images)})
        run.set_tags({"rnnexp.data_shape": "x".join(map(str, raw.images.shape))})
    print(f"fetch: {len(raw.images)} images {raw.images.shape[1:]} -> {args.out}")


def _cmd_prepare(args: argparse.Namespace, params: Params) -> None:
    from rnnexp import tracking
    from rnnexp.data.prepare import check_input, prepare, read_meta, write_prepared
    from rnnexp.data.sources import read_raw

    d = params.data
    raw = read_raw(args.raw)
    check_input(raw, d.val_fraction, d.test_fraction, d.task)  # before a run opens
    with tracking.tracked_run(params, "prepare") as run:
        data = prepare(
            raw,
            d.levels,
            d.seed,
            d.val_fraction,
            d.test_fraction,
            task=d.task,
            occlusion=d.occlusion,
            noise_level=d.noise_level,
        )
        write_prepared(data, args.out)
        meta = read_meta(args.out)
        run.set_tags({"rnnexp.data_hash": meta["content_hash"]})
        run.log_metrics({f"split/{k}": v for k, v in meta["splits"].items()})
    print(f"prepare: splits {meta['splits']}, hash {meta['content_hash'][:12]} -> {args.out}")


def _tuned(params: Params, path: str) -> Params:
    """``params`` with the tune stage's best params merged over them (train.use_tuned)."""
    from rnnexp.config import read_yaml, with_overrides

    if not params.train.use_tuned:
        return params
    if not Path(path).is_file():
        raise RnnexpError(
            f"{path}: tuned params not found; run the tune stage (dvc repro tune) or set "
            "train.use_tuned: false"
        )
    tuned = read_yaml(path)
    if not isinstance(tuned, dict) or not isinstance(tuned.get("params"), dict):
        raise RnnexpError(f"{path}: expected a mapping with a 'params' mapping")
    return with_overrides(params, tuned["params"], source=path)


def _cmd_tune(args: argparse.Namespace, params: Params) -> None:
    import yaml

    from rnnexp.atomic import atomic_write_text
    from rnnexp.tune import run_tuning, trials_csv

    result = run_tuning(params, args.prepared, workers=args.workers)
    out = Path(args.out)
    best = {"study": result.study_name or None, "best_value": result.best_value}
    best["params"] = result.best_overrides
    atomic_write_text(out / "tune_trials.csv", trials_csv(result.trials))
    atomic_write_text(out / "best_params.yaml", yaml.safe_dump(best, sort_keys=False))
    if not result.trials:
        print("tune: tune.n_trials is 0; training uses params.yaml as it is")
        return
    print(
        f"tune: study {result.study_name}, {len(result.trials)} trials, best "
        f"{params.tune.metric} {result.best_value:.4f} with {result.best_overrides}"
    )


def _cmd_classifier(args: argparse.Namespace, params: Params) -> None:
    from rnnexp import tracking
    from rnnexp.classifier import save_classifier, save_unavailable, train_classifier
    from rnnexp.data.prepare import read_meta

    meta = read_meta(args.prepared)
    if not meta.get("has_labels") or not meta.get("num_classes"):
        reason = f"{args.prepared} has no labels (sample scores need labelled data)"
        save_unavailable(reason, meta["content_hash"], args.out)
        print(f"classifier: none trained: {reason} -> {args.out}")
        return
    tags = {"rnnexp.data_hash": meta["content_hash"]}
    with tracking.tracked_run(params, "classifier", tags=tags) as run:
        model, info = train_classifier(
            args.prepared, epochs=params.evaluate.classifier_epochs, seed=CLASSIFIER_SEED
        )
        save_classifier(model, info, args.out)
        run.log_metrics(
            {
                f"classifier/{k}": info[k]
                for k in ("test_accuracy", "val_accuracy", "best_epoch")
                if info[k] is not None
            }
        )
    accuracy = info["test_accuracy"]
    shown = "n/a (empty test split)" if accuracy is None else f"{accuracy:.4f}"
    print(f"classifier: test accuracy {shown} -> {args.out}")


def _cmd_train(args: argparse.Namespace, params: Params) -> None:
    from rnnexp.train import run_training

    params = _tuned(params, args.tuned)
    result = run_training(params, args.prepared, args.out)
    figures = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    print(f"train: {result.epochs} epochs, {figures}, run {result.run_id}")


def _curve_csv(rows: list[dict[str, float]]) -> str:
    columns = ["epoch", "train_nll", "train_bpd", "val_nll", "val_bpd"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _cmd_evaluate(args: argparse.Namespace, params: Params) -> None:
    from rnnexp import tracking
    from rnnexp.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
    from rnnexp.checkpoint import load_checkpoint
    from rnnexp.evaluate import evaluate_checkpoint, flat_metrics

    result = evaluate_checkpoint(args.checkpoint, args.prepared, params.evaluate, args.classifier)
    # The full curve lives in the last checkpoint; the best one stops at its epoch.
    last = Path(args.checkpoint).with_name("last.ckpt")
    curve = load_checkpoint(last).history if last.is_file() else result.curve
    out = Path(args.out)
    samples_png = tracking.image_bytes(result.samples)
    atomic_write_bytes(out / "samples.png", samples_png)
    atomic_write_bytes(out / "completions.png", tracking.image_bytes(result.completions))
    atomic_write_bytes(out / "nll_heatmap.png", tracking.image_bytes(result.nll_heat_map))
    atomic_write_text(out / "val_curve.csv", _curve_csv(curve))
    atomic_write_json(out / "metrics.json", result.metrics)

    flat = flat_metrics(result.metrics)
    run = tracking.open_existing_run(params, result.run_id)
    if run is not None:  # evaluation joins the model's run, as the compare view wants
        run.log_metrics(flat)
        run.log_image(result.samples, key="eval_samples")
        run.log_image(result.completions, key="eval_completions")
        run.log_image(result.nll_heat_map, key="nll_heatmap")
        run.log_artifact(out / "metrics.json", "evaluate")
        run.set_tags({"rnnexp.evaluated": "true"})
        where = f"model run {run.run_id}"
    else:  # e.g. train restored from DVC's run-cache: no run of this model in this store
        tags = {"rnnexp.model_run_id": result.run_id or "unknown"}
        with tracking.tracked_run(params, "evaluate", tags=tags) as run:
            run.log_metrics(flat)
            run.log_image(result.samples, key="eval_samples")
        where = f"new run {run.run_id} (model run not in this store)"
    test, base = result.metrics["test"], result.metrics["baseline"]
    print(
        f"evaluate: test NLL {test['nll_nats']:.2f} nats/image ({test['bpd']:.4f} bits/dim), "
        f"baseline {base['nll_nats']:.2f}; logged to {where}"
    )
    if "sample" in result.metrics:
        print(
            f"evaluate: Frechet distance {result.metrics['sample']['frechet']:.2f} over "
            f"{result.metrics['sample']['samples']} samples, baseline {base['frechet']:.2f}"
        )
    for note in result.notes:
        print(f"evaluate: {note}")


def _cmd_sample(args: argparse.Namespace, params: Params) -> None:
    import torch

    from rnnexp.atomic import atomic_write_bytes
    from rnnexp.checkpoint import load_checkpoint
    from rnnexp.generate import class_labels, generate
    from rnnexp.images import make_grid
    from rnnexp.tracking import image_bytes

    if args.n < 1:
        raise RnnexpError(f"--n must be at least 1, got {args.n}")
    if args.temperature <= 0:
        raise RnnexpError(f"--temperature must be positive, got {args.temperature}")
    loaded = load_checkpoint(args.checkpoint)
    config = loaded.generator.config
    if config.source_channels:
        raise RnnexpError(
            f"{args.checkpoint}: this generator translates images ({config.source_channels}-"
            "channel source); use `rnnexp complete --input ...`"
        )
    labels = None
    if args.class_ is not None:
        if not config.num_classes:
            raise RnnexpError(f"--class: {args.checkpoint} is not a class-conditional model")
        if not 0 <= args.class_ < config.num_classes:
            raise RnnexpError(f"--class must lie in 0..{config.num_classes - 1}, got {args.class_}")
        labels = torch.full((args.n,), args.class_)
    elif config.num_classes:
        labels = class_labels(args.n, config.num_classes)
    _, h, w = loaded.image_shape
    images = generate(
        loaded.generator, args.n, h, w, seed=args.seed, temperature=args.temperature, labels=labels
    )
    nrow = config.num_classes if args.class_ is None and config.num_classes else None
    grid = make_grid(images.numpy(), config.levels, nrow=nrow)
    atomic_write_bytes(Path(args.out), image_bytes(grid))
    print(f"sample: {args.n} images -> {args.out}")


def _cmd_complete(args: argparse.Namespace, params: Params) -> None:
    from rnnexp.atomic import atomic_write_bytes
    from rnnexp.checkpoint import load_checkpoint
    from rnnexp.data.prepare import quantize
    from rnnexp.data.sources import load_images
    from rnnexp.generate import TaskInfo, source_preview, translate, triplet_grid
    from rnnexp.tracking import image_bytes

    if args.temperature <= 0:
        raise RnnexpError(f"--temperature must be positive, got {args.temperature}")
    loaded = load_checkpoint(args.checkpoint)
    config = loaded.generator.config
    task = TaskInfo.from_data_info(loaded.data)
    if config.num_classes:
        raise RnnexpError(f"{args.checkpoint}: a class-conditional model; use `rnnexp sample`")
    c, h, w = loaded.image_shape
    if h != w:
        raise RnnexpError(f"{args.checkpoint}: complete supports square images, not {h}x{w}")
    if args.as_source and not config.source_channels:
        raise RnnexpError("--as-source needs an image-to-image model (task denoise/upscale)")
    if args.as_source and task.task == "completion":
        raise RnnexpError("--as-source: completion sources are built from whole images")
    size = h // 2 if args.as_source and task.task == "upscale" else h
    pixels = load_images(args.input, size, c)  # (N, size, size, C) uint8
    levels = quantize(pixels, 255, config.levels).transpose(0, 3, 1, 2).copy()  # (N, C, s, s)
    targets = None if args.as_source else levels
    sources, outputs = translate(
        loaded.generator,
        targets,
        task,
        sources=levels if args.as_source else None,
        seed=args.seed,
        temperature=args.temperature,
    )
    preview = source_preview(sources, c, h, w)
    grid = triplet_grid(preview, outputs, targets, config.levels)
    atomic_write_bytes(Path(args.out), image_bytes(grid))
    columns = "source | output" + ("" if args.as_source else " | target")
    print(f"complete: {len(outputs)} images ({columns}) -> {args.out}")


def _cmd_compare(args: argparse.Namespace, params: Params) -> None:
    from rnnexp.compare import compare_runs

    sys.stdout.write(
        compare_runs(
            params, args.run_ids, experiment=args.experiment, dvc_exp=args.dvc_exp, fmt=args.format
        )
    )


def _cmd_doctor(args: argparse.Namespace, params: Params) -> int:
    from rnnexp.doctor import doctor
    from rnnexp.tracking import workspace_root

    return doctor(params, workspace_root())


def _cmd_server(args: argparse.Namespace, params: Params | None) -> int:
    from rnnexp.server import ServerOptions, run_server
    from rnnexp.tracking import workspace_root

    root = Path(args.root) if args.root else workspace_root() / "mlflow-server"
    options = ServerOptions(
        root=root,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        host=args.host,
        port=args.port,
        workers=args.workers,
        auth=args.auth,
        allowed_hosts=args.allowed_hosts,
    )
    return run_server(options, dry_run=args.dry_run)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnexp", description="PixelRNN experiments: DVC stages tracked in MLflow."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, help_text: str, fn: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override a param for this run (repeatable)",
        )
        p.set_defaults(fn=fn)
        return p

    p = stage("fetch", "write data/raw/ from data.source", _cmd_fetch)
    p.add_argument("--out", default="data/raw")
    p.add_argument("--downloads", default="data/downloads", help="download cache (idx URLs)")
    p = stage("prepare", "quantize and split data/raw/ into data/prepared/", _cmd_prepare)
    p.add_argument("--raw", default="data/raw")
    p.add_argument("--out", default="data/prepared")
    p = stage("tune", "search hyperparameters (Optuna); best params to reports/", _cmd_tune)
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--out", default="reports")
    p.add_argument("--workers", type=int, default=None, help="worker processes (tune.workers)")
    p = stage(
        "classifier",
        "train the scoring classifier of the prepared data (sample scores); models/",
        _cmd_classifier,
    )
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--out", default="models/classifier.pt")
    p = stage("train", "train the generator; checkpoints under models/", _cmd_train)
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--out", default="models")
    p.add_argument("--tuned", default="reports/best_params.yaml", help="tune stage output")
    p = stage("evaluate", "score the best checkpoint; reports/", _cmd_evaluate)
    p.add_argument("--checkpoint", default="models/best.ckpt")
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument(
        "--classifier",
        default="models/classifier.pt",
        help="scoring classifier (classifier stage); without it sample scores are skipped",
    )
    p.add_argument("--out", default="reports")
    p = stage("sample", "write a PNG grid of samples from a checkpoint", _cmd_sample)
    p.add_argument("--checkpoint", default="models/best.ckpt")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--class", dest="class_", type=int, help="class of every image (default: all)")
    p.add_argument("--out", default="samples.png")
    p = stage(
        "complete",
        "translate or complete images with a checkpoint; writes source | output | target rows",
        _cmd_complete,
    )
    p.add_argument("--checkpoint", default="models/best.ckpt")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument(
        "--as-source",
        action="store_true",
        help="the inputs are sources (noisy / low-resolution images), not targets",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", default="completions.png")
    p = stage("compare", "compare train runs side by side: key params and metrics", _cmd_compare)
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="default: the experiment's runs")
    p.add_argument("--experiment", metavar="NAME", help="default: tracking.experiment")
    p.add_argument("--dvc-exp", metavar="NAME", help="only runs of this DVC experiment")
    p.add_argument("--format", choices=["text", "csv", "markdown"], default="text")
    stage(
        "doctor",
        "check the tracking store, Optuna storage, DVC remote, data, devices and versions",
        _cmd_doctor,
    )
    p = sub.add_parser(
        "server",
        help="run the team's MLflow tracking server (mlflow server)",
        description="Run `mlflow server` with a SQLite or PostgreSQL backend and served "
        "artifacts; bound to 127.0.0.1 unless --host says otherwise.",
    )
    p.set_defaults(fn=_cmd_server)
    p.add_argument("--root", help="server files (SQLite store, artifacts, auth); default "
                   "<repo>/mlflow-server")  # fmt: skip
    p.add_argument("--backend-store-uri", help="default sqlite:///<root>/mlflow-server.db; "
                   "or postgresql+psycopg://user:pw@host/db")  # fmt: skip
    p.add_argument("--artifacts-destination", help="default <root>/artifacts; or s3://...")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--allowed-hosts", help="Host headers MLflow accepts (see mlflow server)")
    p.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app; first start needs MLFLOW_AUTH_ADMIN_PASSWORD",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rnnexp`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        # Every stage validates params.yaml first; `server` reads none.
        params = load_params(args.params, args.overrides) if hasattr(args, "params") else None
        status = args.fn(args, params)
    except RnnexpError as exc:
        print(f"rnnexp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user must fix: a file where a folder goes, no access
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rnnexp {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rnnexp {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


def entry() -> None:
    """The console script: :func:`main`, then a fast exit.

    Tearing down the interpreter after torch, Lightning and MLflow were imported
    takes seconds (measured 1-5 s on 2 cores), all after the stage's outputs are
    written and its MLflow run has ended: a kill then would look like a failed
    stage that had in fact finished. So, once main returns, the exit handlers run
    (logging and MLflow flush there) and the process ends without module teardown.
    """
    status = main()
    atexit._run_exitfuncs()  # what a normal exit runs, minus the module teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
