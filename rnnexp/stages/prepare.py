"""DVC stage ``prepare``: quantize ``data/raw/`` to ``data.levels`` levels, build the
task's sources and split into train/val/test under ``data/prepared/``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from rnnexp.config import Params
from rnnexp.data.prepare import PreparedData, check_input, prepare, read_meta, write_prepared
from rnnexp.data.raw import RAW_DATASET_FILE
from rnnexp.data.sources import RawDataset, read_raw
from rnnexp.errors import DataError

log = logging.getLogger(__name__)


def run(raw: RawDataset, params: Params) -> PreparedData:
    """The prepared splits of ``raw`` as ``params.data`` asks."""
    d = params.data
    return prepare(
        raw,
        d.levels,
        d.seed,
        d.val_fraction,
        d.test_fraction,
        task=d.task,
        occlusion=d.occlusion,
        noise_level=d.noise_level,
    )


def main(args: Any, params: Params) -> None:
    """Read ``args.raw``, write ``args.out`` and log the splits and data hash."""
    from rnnexp import tracking

    d = params.data
    raw = read_raw(args.raw)
    _, height, width, _ = raw.images.shape
    if not height or not width:  # a hand-made data/raw; fetch refuses such sources
        raise DataError(
            f"raw data file {Path(args.raw) / RAW_DATASET_FILE} holds images of {height}x{width} "
            "pixels; an image needs at least 1x1: fix the source and rerun the fetch stage"
        )
    check_input(raw, d.val_fraction, d.test_fraction, d.task)  # before a run opens
    with tracking.tracked_run(params, "prepare") as tracked:
        write_prepared(run(raw, params), args.out)
        meta = read_meta(args.out)
        tracked.set_tags({"rnnexp.data_hash": meta["content_hash"]})
        tracked.log_metrics({f"split/{k}": v for k, v in meta["splits"].items()})
    log.info(f"prepare: splits {meta['splits']}, hash {meta['content_hash'][:12]} -> {args.out}")


if __name__ == "__main__":
    from rnnexp.cli import entry

    entry(["prepare", *sys.argv[1:]])
