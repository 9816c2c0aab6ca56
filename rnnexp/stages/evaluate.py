"""DVC stage ``evaluate``: score the best checkpoint on the test split; ``reports/``.

:func:`run` is pure (no files written, no MLflow): test likelihood beside the
independent-pixel baseline, sample-quality scores, and pictures. :func:`main`
writes ``reports/`` and logs the figures into the model's MLflow run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rnnexp.config import EvaluateParams, Params
from rnnexp.data.prepare import read_arrays, read_meta, read_split
from rnnexp.errors import RnnexpError
from rnnexp.evaluation.generation import TaskInfo, sample_picture
from rnnexp.evaluation.images import image_bytes
from rnnexp.evaluation.likelihood import (
    bits_per_dim,
    completion_picture,
    conditioning_arrays,
    heat_map,
    hidden_region,
    independent_pixel_nll,
    pixel_nll,
)
from rnnexp.evaluation.sample_quality import quality_scores, read_scorer
from rnnexp.training.checkpoint import check_fits_data, load_checkpoint
from rnnexp.util.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_writable,
)
from rnnexp.util.devices import torch_device
from rnnexp.util.threads import torch_threads

log = logging.getLogger(__name__)
# What main writes into args.out (dvc.yaml's outs and metrics of the stage).
OUTPUTS = ("samples.png", "completions.png", "nll_heatmap.png", "val_curve.csv", "metrics.json")


def flat_metrics(groups: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics groups as MLflow keys ``group/key[/subkey]``; None values left out."""
    flat: dict[str, float] = {}
    for key, value in groups.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{key}/"))
        elif value is not None:
            flat[f"{prefix}{key}"] = float(value)
    return flat


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # nested by group, as DVC metrics
    samples: Image.Image
    completions: Image.Image
    nll_heat_map: Image.Image
    curve: list[dict[str, float]]
    run_id: str | None
    notes: list[str]


def run(
    checkpoint: str | Path,
    prepared_dir: str | Path,
    params: EvaluateParams,
    classifier: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Evaluation:
    """Score a checkpoint on the test split and draw its pictures.

    Likelihood always; with a ``classifier`` file (the classifier stage's output)
    and ``params.score_samples`` > 0 also the sample-quality scores of
    :func:`quality_scores`. ``Evaluation.notes`` says what was skipped and why.
    Torch uses ``params.threads`` CPU threads meanwhile (0: its default); the
    generator and the classifier run on ``device`` (the stage passes the device of
    ``train.accelerator``). Samples are drawn from CPU random generators, so a seed
    gives the same draws on any device.
    """
    with torch_threads(params.threads):
        return _evaluate(checkpoint, prepared_dir, params, classifier, torch.device(device))


def _evaluate(
    checkpoint: str | Path,
    prepared_dir: str | Path,
    params: EvaluateParams,
    classifier: str | Path | None,
    device: torch.device,
) -> Evaluation:
    loaded = load_checkpoint(checkpoint)
    loaded.generator.to(device)
    meta = read_meta(prepared_dir)
    check_fits_data(loaded, meta, checkpoint, prepared_dir)
    data_shape = (meta["channels"], meta["height"], meta["width"])
    config = loaded.generator.config
    test_arrays = read_arrays(prepared_dir, "test", meta)
    test = test_arrays["images"]
    train, _ = read_split(prepared_dir, "train", meta)
    if len(test) == 0:
        raise RnnexpError(
            f"{Path(prepared_dir) / 'test.npz'}: the test split is empty; set "
            "data.test_fraction above 0 and rerun the prepare stage"
        )
    dims = math.prod(data_shape)
    cond = conditioning_arrays(config, test_arrays, meta["levels"])
    per_pixel = pixel_nll(loaded.generator, test, params.batch_size, **cond)  # (N, C, H, W)
    nll = float(per_pixel.sum(axis=(1, 2, 3)).mean())
    baseline = independent_pixel_nll(train, test, meta["levels"])
    task = TaskInfo.from_data_info(loaded.data)
    picture = sample_picture(
        loaded.generator, task, test_arrays, params.n_samples, params.seed, params.temperature
    )
    metrics: dict[str, dict[str, Any]] = {
        "test": {"nll_nats": nll, "bpd": bits_per_dim(nll, dims), "images": len(test)},
        "baseline": {"nll_nats": baseline, "bpd": bits_per_dim(baseline, dims)},
        "train": {"epochs": len(loaded.history), "checkpoint_epoch": loaded.epoch},
    }
    hidden = hidden_region(config, task, test_arrays)
    if hidden is not None:
        hidden_dims = hidden.sum(axis=(1, 2, 3)) * data_shape[0]  # sub-pixels per image
        hidden_nll = (per_pixel * hidden).sum(axis=(1, 2, 3))
        metrics["completion"] = {
            "hidden_nll_nats": float(hidden_nll.mean()),
            "hidden_bpd": float((hidden_nll / (hidden_dims * math.log(2))).mean()),
        }
    notes = []
    scorer, scorer_info, why = read_scorer(classifier, meta)
    if scorer is not None:
        scorer.to(device)
    if params.score_samples == 0:
        notes.append("sample scores off (evaluate.score_samples: 0)")
    elif scorer is None:
        notes.append(f"sample scores skipped: {why}")
    else:
        scores = quality_scores(
            loaded.generator, task, scorer, scorer_info, test_arrays, train, params
        )
        for group, values in scores.items():
            metrics.setdefault(group, {}).update(values)
    completion_grid = completion_picture(
        loaded.generator,
        task,
        test_arrays,
        min(params.n_samples, 16),
        params.seed,
        params.temperature,
    )
    return Evaluation(
        metrics=metrics,
        samples=picture,
        completions=completion_grid,
        notes=notes,
        nll_heat_map=heat_map(per_pixel.mean(axis=(0, 1))),
        curve=loaded.history,
        run_id=loaded.run_id,
    )


def curve_csv(rows: list[dict[str, float]]) -> str:
    """The per-epoch curve as the CSV of the DVC plot ``reports/val_curve.csv``."""
    columns = ["epoch", "train_nll", "train_bpd", "val_nll", "val_bpd"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(args: Any, params: Params) -> None:
    """Write ``reports/`` (metrics, curve, pictures) and log them into the model's run."""
    from rnnexp import tracking

    registry = params.tracking.registered_model or params.tracking.experiment
    out = Path(args.out)
    check_writable(files=[out / name for name in OUTPUTS])  # before any work, like these:
    if params.tracking.enabled:  # a refused registry name, a store that does not answer
        tracking.RunHandle.check_registry_name(registry)
        tracking.probe_store(params, write=False)
    device = torch_device(params.train.accelerator)  # where training would run
    log.debug(f"evaluate: on {device}")
    result = run(args.checkpoint, args.prepared, params.evaluate, args.classifier, device)
    # The full curve lives in the last checkpoint; the best one stops at its epoch.
    last = Path(args.checkpoint).with_name("last.ckpt")
    curve = load_checkpoint(last).history if last.is_file() else result.curve
    result.metrics["train"]["epochs"] = len(curve)  # every epoch trained, not the best's
    atomic_write_bytes(out / "samples.png", image_bytes(result.samples))
    atomic_write_bytes(out / "completions.png", image_bytes(result.completions))
    atomic_write_bytes(out / "nll_heatmap.png", image_bytes(result.nll_heat_map))
    atomic_write_text(out / "val_curve.csv", curve_csv(curve))
    atomic_write_json(out / "metrics.json", result.metrics)

    flat = flat_metrics(result.metrics)
    run_ = tracking.open_existing_run(params, result.run_id)
    if run_ is not None:  # evaluation joins the model's run, as the compare view wants
        run_.log_metrics(flat)
        run_.log_dataset(read_meta(args.prepared), args.prepared, "evaluation", params.data.source)
        run_.log_image(result.samples, key="eval_samples")
        run_.log_image(result.completions, key="eval_completions")
        run_.log_image(result.nll_heat_map, key="nll_heatmap")
        run_.log_artifact(out / "metrics.json", "evaluate")
        run_.set_tags({"rnnexp.evaluated": "true"})
        where = f"model run {run_.run_id}"
        exp = {"rnnexp.dvc_exp": os.environ["DVC_EXP_NAME"]} if "DVC_EXP_NAME" in os.environ else {}
        data_hash = read_meta(args.prepared)["content_hash"]
        registered = run_.register_champion(registry, flat, {"rnnexp.data_hash": data_hash, **exp})
    else:  # e.g. train restored from DVC's run-cache: no run of this model in this store
        tags = {"rnnexp.model_run_id": result.run_id or "unknown"}
        with tracking.tracked_run(params, "evaluate", tags=tags) as run_:
            run_.log_metrics(flat)
            meta = read_meta(args.prepared)
            run_.log_dataset(meta, args.prepared, "evaluation", params.data.source)
            run_.log_image(result.samples, key="eval_samples")
        where = f"new run {run_.run_id} (model run not in this store)"
        why = "the model's run is not in this store" if params.tracking.enabled else "tracking off"
        registered = f"not registered: {why}"
    test, base = result.metrics["test"], result.metrics["baseline"]
    log.info(
        f"evaluate: test NLL {test['nll_nats']:.2f} nats/image ({test['bpd']:.4f} bits/dim), "
        f"baseline {base['nll_nats']:.2f}; logged to {where}"
    )
    if "sample" in result.metrics:
        log.info(
            f"evaluate: Frechet distance {result.metrics['sample']['frechet']:.2f} over "
            f"{result.metrics['sample']['samples']} samples, baseline {base['frechet']:.2f}"
        )
    log.info(f"evaluate: {registered}")
    for note in result.notes:
        log.info(f"evaluate: {note}")


if __name__ == "__main__":
    from rnnexp.cli import entry

    entry(["evaluate", *sys.argv[1:]])
