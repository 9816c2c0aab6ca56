"""``rnnexp complete``: complete or translate images with a checkpoint; a PNG of
``source | output | target`` rows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rnnexp.commands.sample import check_generation_args
from rnnexp.config import MAX_GRID_IMAGES, Params
from rnnexp.data.prepare import quantize
from rnnexp.data.sources import image_files, load_images
from rnnexp.errors import RnnexpError
from rnnexp.evaluation.generation import TaskInfo, source_preview, translate, triplet_grid
from rnnexp.evaluation.images import image_bytes
from rnnexp.training.checkpoint import load_checkpoint
from rnnexp.util.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


def main(args: Any, params: Params) -> None:
    """Complete (or, ``args.as_source``, translate) the images at ``args.input``."""
    check_generation_args(args)
    count = len(image_files(args.input))  # before the checkpoint: --input alone decides
    if count > MAX_GRID_IMAGES:
        raise RnnexpError(
            f"--input {args.input}: {count} images, more than the {MAX_GRID_IMAGES} one call "
            "completes (each is sampled pixel by pixel); split the folder"
        )
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
    log.info(f"complete: {len(outputs)} images ({columns}) -> {args.out}")
