"""Early stopping, last.ckpt as the last epoch, and the train stage continuing the best
tune trial instead of training it again (one budget for trial and final model)."""

import json

import lightning.pytorch as pl
import pytest
import torch
import yaml

from rnnexp.stages.train import run as run_train
from rnnexp.stages.tune import main as tune_main
from rnnexp.training.fit import run_training
from rnnexp.training.resume import stopped_early
from rnnexp.training.system import cosine_with_warmup

SPACE = "tune.space={train.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}}"


class FreezeAfterFirstEpoch(pl.Callback):
    """lr 0 from epoch 1 on: validation stays equal, so epoch 0 stays the best."""

    def on_train_epoch_end(self, trainer, module):
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = 0.0


def epoch_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("generator.")}


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_keeps_best_and_last_is_the_last_epoch(
    store, prepared_dir, tiny_params, tmp_path
):
    params = tiny_params("train.max_epochs=8", "train.patience=2", "train.lr_schedule=constant")
    result = run_training(params, prepared_dir, tmp_path, callbacks=[FreezeAfterFirstEpoch()])
    # epoch 0 is the best; epochs 1 and 2 are no better: patience 2 stops after epoch 2
    assert result.stopped_early and result.epochs == 3 and result.epochs_trained == 3
    assert result.metrics["best/epoch"] == 0
    assert epoch_of(tmp_path / "best.ckpt") == 0
    assert epoch_of(tmp_path / "last.ckpt") == 2  # not the best epoch's copy
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(last["rnnexp"]["history"]) == 3 and stopped_early(last)
    assert store.get_run(result.run_id).data.metrics["epochs"] == 3


def test_without_patience_every_epoch_is_trained(store, prepared_dir, tiny_params, tmp_path):
    params = tiny_params("train.max_epochs=4", "train.patience=0", "train.lr_schedule=constant")
    result = run_training(params, prepared_dir, tmp_path, callbacks=[FreezeAfterFirstEpoch()])
    assert not result.stopped_early and result.epochs == 4
    assert epoch_of(tmp_path / "best.ckpt") == 0 and epoch_of(tmp_path / "last.ckpt") == 3
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert not stopped_early(last)


def tune_then_train(params, prepared_dir, root):
    """The tune stage's main (writes models/tuned and reports/) and then the train stage."""
    args = type("Args", (), {})()
    args.prepared, args.out, args.workers = str(prepared_dir), str(root / "reports"), None
    args.trial_out = str(root / "models" / "tuned")
    tune_main(args, params)
    out = root / "models"
    best_params = str(root / "reports" / "best_params.yaml")
    result = run_train(params, str(prepared_dir), str(out), best_params, args.trial_out)
    return result, out


@pytest.mark.parametrize("schedule", ["constant", "plateau"])
def test_train_continues_the_best_trial_and_equals_an_uninterrupted_training(
    store, prepared_dir, tiny_params, tmp_path, schedule
):
    # one trial (params.yaml's configuration) of 2 epochs; the final budget is 3 epochs
    params = tiny_params(SPACE, "tune.n_trials=1", "tune.epochs=2", "train.max_epochs=3",
                         f"train.lr_schedule={schedule}",
                         f"tune.storage=sqlite:///{tmp_path}/optuna.db")  # fmt: skip
    result, out = tune_then_train(params, prepared_dir, tmp_path)
    trial = json.loads((out / "tuned" / "trial.json").read_text())
    assert trial["checkpoints"] and trial["trial"] == 0
    assert result.epochs == 3 and result.epochs_trained == 1  # only the epoch the trial had left
    run = store.get_run(result.run_id)
    assert run.data.tags["rnnexp.source_run"] == trial["trial_run_id"] != result.run_id
    # the copied checkpoints name the train run (the evaluate stage logs to it)
    info = torch.load(out / "best.ckpt", map_location="cpu", weights_only=True)["rnnexp"]
    assert info["run_id"] == result.run_id and info["source_run_id"] == trial["trial_run_id"]
    # the whole curve is on the train run: the trial's 2 epochs and the third
    history = store.get_metric_history(result.run_id, "val/bpd")
    assert sorted(m.step for m in history) == [0, 1, 2]

    reference = run_training(params, prepared_dir, tmp_path / "reference", resume=False)
    assert reference.epochs == 3
    assert same_weights(out / "last.ckpt", tmp_path / "reference" / "last.ckpt")
    assert same_weights(out / "best.ckpt", tmp_path / "reference" / "best.ckpt")


def test_a_trial_that_stopped_early_is_taken_as_it_stands(
    store, prepared_dir, tiny_params, tmp_path
):
    storage = f"tune.storage=sqlite:///{tmp_path}/optuna.db"
    params = tiny_params(SPACE, "tune.n_trials=1", "train.max_epochs=30", "train.patience=1",
                         "train.lr=0.3", storage)  # fmt: skip
    result, out = tune_then_train(params, prepared_dir, tmp_path)
    best = yaml.safe_load((tmp_path / "reports" / "best_params.yaml").read_text())
    assert result.epochs_trained == 0 and result.stopped_early
    assert result.epochs < 30
    assert same_weights(out / "best.ckpt", out / "tuned" / "best.ckpt")
    assert result.metrics["best/val_bpd"] == pytest.approx(best["best_value"])


def test_without_a_search_the_train_stage_trains_from_scratch(
    store, prepared_dir, tiny_params, tmp_path
):
    params = tiny_params("tune.n_trials=0", f"tune.storage=sqlite:///{tmp_path}/optuna.db")
    result, out = tune_then_train(params, prepared_dir, tmp_path)
    trial = json.loads((out / "tuned" / "trial.json").read_text())
    assert trial["trial"] is None and not trial["checkpoints"]
    assert result.epochs == result.epochs_trained == 3
    assert "rnnexp.source_run" not in store.get_run(result.run_id).data.tags


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factors = [cosine_with_warmup(step, 4, 20) for step in range(21)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == 1.0 and factors[20] == pytest.approx(0.0)
    decay = factors[4:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))  # monotonic
    assert factors[12] == pytest.approx(0.5)  # half way through the decay


def test_cosine_schedule_trains_with_the_scheduled_lr(store, prepared_dir, tiny_params, tmp_path):
    params = tiny_params("train.lr_schedule=cosine", "train.warmup_epochs=1", "train.max_epochs=3")
    seen = []

    class LrProbe(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    run_training(params, prepared_dir, tmp_path, callbacks=[LrProbe()])
    per_epoch = len(seen) // 3
    total, warmup = len(seen), per_epoch
    expected = [params.train.lr * cosine_with_warmup(s, warmup, total) for s in range(total)]
    assert seen == pytest.approx(expected)
    assert max(seen) == pytest.approx(params.train.lr * cosine_with_warmup(warmup, warmup, total))


class RestoreFirstEpoch(pl.Callback):
    """Every validation sees the first epoch's weights: validation stays equal (no
    better), while the optimizer keeps its learning rate."""

    def __init__(self):
        self.first, self.lrs = None, []

    def on_train_epoch_start(self, trainer, module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_start(self, trainer, module):
        if self.first is None:
            self.first = {k: v.clone() for k, v in module.state_dict().items()}
        else:
            module.load_state_dict(self.first)


def test_plateau_schedule_halves_the_lr_after_stalled_epochs(
    store, prepared_dir, tiny_params, tmp_path
):
    from rnnexp.training.system import PLATEAU_PATIENCE

    params = tiny_params("train.lr_schedule=plateau", "train.max_epochs=6")
    probe = RestoreFirstEpoch()
    run_training(params, prepared_dir, tmp_path, callbacks=[probe])
    lr = params.train.lr
    # epochs 1.. are no better than epoch 0; after PLATEAU_PATIENCE + 1 of them, halved
    halved_from = 1 + PLATEAU_PATIENCE + 1
    assert probe.lrs[:halved_from] == pytest.approx([lr] * halved_from)
    assert probe.lrs[halved_from] == pytest.approx(lr / 2)
