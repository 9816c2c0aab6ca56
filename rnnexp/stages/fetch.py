"""DVC stage ``fetch``: write ``data/raw/`` from ``data.source`` (digits, IDX files or
a folder of images; IDX files may be downloaded and checked against ``data.sha256``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from rnnexp.config import Params
from rnnexp.data.sources import RawDataset, fetch, write_raw

log = logging.getLogger(__name__)


def run(params: Params, download_dir: str | None = None) -> RawDataset:
    """The raw images (and labels) that ``params.data`` names."""
    d = params.data
    return fetch(d.source, d.path, d.url, d.sha256, d.image_size, download_dir=download_dir)


def main(args: Any, params: Params) -> None:
    """Write ``args.out`` (data/raw) and log the image count to a tracked run."""
    from rnnexp import tracking

    with tracking.tracked_run(params, "fetch") as tracked:
        raw = run(params, args.downloads)
        write_raw(raw, args.out)
        tracked.log_metrics({"images": len(raw.images)})
        tracked.set_tags({"rnnexp.data_shape": "x".join(map(str, raw.images.shape))})
    log.info(f"fetch: {len(raw.images)} images {raw.images.shape[1:]} -> {args.out}")


if __name__ == "__main__":
    from rnnexp.cli import entry

    entry(["fetch", *sys.argv[1:]])
