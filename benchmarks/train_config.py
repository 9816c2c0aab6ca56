"""Train one configuration on the default digits and print its best validation and test NLL.

The tool behind the choice of issue 14's defaults and search space: each run trains
``params.yaml`` with the ``--set`` changes given (tracking off, no tuned params), keeps
the best-validation checkpoint (``train.patience`` and ``train.max_epochs`` apply) and
scores it on the test split. Works in a scratch folder; prints one JSON line.

Usage: python benchmarks/train_config.py NAME [section.key=value ...]
Example: python benchmarks/train_config.py h48 model.hidden=48 model.layers=3 model.dropout=0.3
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    os.environ.setdefault("CI", "true")  # no progress bar
    import torch

    from rnnexp.config import load_params
    from rnnexp.data.prepare import read_arrays
    from rnnexp.evaluation.likelihood import model_nll
    from rnnexp.training.checkpoint import load_checkpoint
    from rnnexp.training.fit import run_training

    name, sets = sys.argv[1], sys.argv[2:]
    fixed = ["tracking.enabled=false", "train.use_tuned=false", "train.sample_every=0"]
    params = load_params(ROOT / "params.yaml", [*fixed, *sets])
    scratch = Path(tempfile.mkdtemp(prefix="rnnexp-config-"))
    cli = [sys.executable, "-m", "rnnexp.cli"]
    subprocess.run([*cli, "fetch", "--out", str(scratch / "raw")], check=True, cwd=ROOT)
    prepared = scratch / "prepared"
    prepare = [*cli, "prepare", "--raw", str(scratch / "raw"), "--out", str(prepared)]
    subprocess.run(prepare, check=True, cwd=ROOT)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = run_training(params, prepared, scratch / "models", resume=False)
    seconds = time.perf_counter() - start
    generator = load_checkpoint(scratch / "models" / "best.ckpt").generator
    with torch.no_grad():
        test_nll = model_nll(generator, read_arrays(prepared, "test")["images"], 256)
    figures = {
        "name": name,
        "sets": sets,
        "epochs": result.epochs,
        "best_epoch": int(result.metrics["best/epoch"]),
        "val_nll": round(result.metrics["best/val_nll"], 2),
        "test_nll": round(test_nll, 2),
        "train_s": round(seconds, 1),
        "load_before": round(load, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
