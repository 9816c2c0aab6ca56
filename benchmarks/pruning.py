"""Does pruning pay? The same seeded study with and without a pruner, on digits.

Runs ``--trials`` trials of the default search space (params.yaml) twice on the
full digits data, once with ``--pruner`` and once without, each in a fresh
study, and prints the best validation bits/dim of each and the epochs trained.

Usage: python benchmarks/pruning.py [--trials 20] [--pruner median|hyperband]
Target (issue 4): with pruning, best val bits/dim within 2% of the unpruned study
while training at most 60% of its epochs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def study(pruner: str, trials: int, work: Path, prepared: Path) -> dict:
    import optuna

    from rnnexp.config import load_params
    from rnnexp.stages.tune import open_storage
    from rnnexp.stages.tune import run as run_tuning

    params = load_params(
        ROOT / "params.yaml",
        [
            f"tune.pruner={pruner}",
            f"tune.n_trials={trials}",
            f"tune.storage=sqlite:///{work}/optuna-{pruner}.db",
            "train.progress_bar=never",
            "train.sample_every=0",
        ],
    )
    start = time.perf_counter()
    result = run_tuning(params, prepared)
    seconds = time.perf_counter() - start
    trials_ = optuna.load_study(study_name=result.study_name, storage=open_storage(params, 1))
    epochs = sum(len(t.intermediate_values) for t in trials_.trials)
    pruned = sum(t.state.name == "PRUNED" for t in trials_.trials)
    return {"best": result.best_value, "epochs": epochs, "pruned": pruned, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--pruner", default="median", choices=["median", "hyperband"])
    args = parser.parse_args()

    from rnnexp.data.prepare import prepare, write_prepared
    from rnnexp.data.sources import load_digits

    work = Path(tempfile.mkdtemp(prefix="rnnexp-pruning-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    prepared = work / "prepared"
    write_prepared(prepare(load_digits(), 17, 0, 0.1, 0.1), prepared)
    with_pruning = study(args.pruner, args.trials, work, prepared)
    without = study("none", args.trials, work, prepared)

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{args.trials} trials, default search space and tune.epochs of params.yaml")
    for name, r in ((args.pruner, with_pruning), ("none", without)):
        print(
            f"pruner {name:9s} best val bpd {r['best']:.4f}  epochs {r['epochs']:4d}  "
            f"pruned {r['pruned']:2d}  {r['seconds']:.0f} s"
        )
    gap = (with_pruning["best"] - without["best"]) / without["best"]
    share = with_pruning["epochs"] / without["epochs"]
    print(f"best val bpd with pruning is {gap:+.2%} vs without (target within 2%)")
    print(f"epochs trained with pruning: {share:.0%} of without (target at most 60%)")


if __name__ == "__main__":
    main()
