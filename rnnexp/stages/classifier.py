"""DVC stage ``classifier``: train the scoring classifier of the prepared data.

The classifier (:mod:`rnnexp.evaluation.classifier`) is what sample-quality scores
see generated images with. It depends on the data only, so it is trained once per
prepared dataset, with a fixed seed, not once per experiment.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from rnnexp.config import Params
from rnnexp.console import progress_line, show_progress_bar
from rnnexp.data.prepare import read_meta
from rnnexp.evaluation.classifier import save_classifier, save_unavailable, train_classifier
from rnnexp.util.threads import torch_threads

log = logging.getLogger(__name__)

CLASSIFIER_SEED = 0  # the scoring classifier is fixed per dataset, not per experiment


class EpochReport:
    """The classifier's progress: a bar on a terminal (``train.progress_bar``), else
    one log line per epoch, ``classifier: epoch 3/20 val accuracy 0.9444 (elapsed
    0:00:12, eta 0:01:08)``; 20 is the most epochs, early stopping may end sooner."""

    def __init__(self, epochs: int, bar: bool) -> None:
        self.epochs, self.start = epochs, time.monotonic()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm  # Lightning's and Optuna's bar library

            self.bar = tqdm(total=epochs, desc="classifier", unit="epoch", leave=False)

    def __call__(self, epoch: int, val_accuracy: float | None) -> None:
        figures = "" if val_accuracy is None else f"val accuracy {val_accuracy:.4f}"
        if self.bar is not None:
            self.bar.set_postfix_str(figures, refresh=False)
            self.bar.update(1)
            if epoch == self.epochs:
                self.close()
            return
        elapsed = time.monotonic() - self.start
        log.info(progress_line("classifier:", epoch, self.epochs, figures, elapsed, epoch))

    def close(self) -> None:
        """Close the bar (if any), also when training stopped before the last epoch."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(prepared_dir: str, params: Params) -> tuple[Any, dict[str, Any]]:
    """The trained classifier and its info (accuracies, epochs run, best epoch, data hash).

    At most ``evaluate.classifier_epochs`` epochs, stopped after
    ``evaluate.classifier_patience`` epochs without a better val accuracy (0: never).
    Torch uses ``evaluate.classifier_threads`` CPU threads meanwhile (0: its default).
    """
    settings = params.evaluate
    epochs, patience = settings.classifier_epochs, settings.classifier_patience
    report = EpochReport(epochs, show_progress_bar(params.train.progress_bar))
    try:
        with torch_threads(settings.classifier_threads) as threads:
            log.debug(f"classifier: <= {epochs} epochs, patience {patience}, {threads} threads")
            model, info = train_classifier(
                prepared_dir, epochs, seed=CLASSIFIER_SEED, on_epoch=report, patience=patience
            )
    finally:
        report.close()
    if info["stopped_early"]:
        log.info(
            f"classifier: stopped at epoch {info['epochs']}/{epochs}: no better val accuracy "
            f"in {patience} epoch{'s' if patience > 1 else ''}; kept epoch {info['best_epoch']}"
        )
    return model, info


def main(args: Any, params: Params) -> None:
    """Write ``args.out`` (models/classifier.pt): a classifier, or why there is none."""
    from rnnexp import tracking
    from rnnexp.util.atomic import check_writable

    check_writable(files=[args.out])  # before the training, not after it
    meta = read_meta(args.prepared)
    if not meta.get("has_labels") or not meta.get("num_classes"):
        reason = f"{args.prepared} has no labels (sample scores need labelled data)"
        save_unavailable(reason, meta["content_hash"], args.out)
        log.info(f"classifier: none trained: {reason} -> {args.out}")
        return
    tags = {"rnnexp.data_hash": meta["content_hash"]}
    with tracking.tracked_run(params, "classifier", tags=tags) as tracked:
        model, info = run(args.prepared, params)
        save_classifier(model, info, args.out)
        tracked.log_metrics(
            {
                f"classifier/{k}": info[k]
                for k in ("test_accuracy", "val_accuracy", "best_epoch", "epochs")
                if info[k] is not None
            }
        )
    accuracy = info["test_accuracy"]
    shown = "n/a (empty test split)" if accuracy is None else f"{accuracy:.4f}"
    log.info(f"classifier: test accuracy {shown} -> {args.out}")


if __name__ == "__main__":
    from rnnexp.cli import entry

    entry(["classifier", *sys.argv[1:]])
