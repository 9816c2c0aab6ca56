"""Time the classifier stage against 3 epochs of Row LSTM training on MNIST-format data.

There is no MNIST here, so the script makes MNIST-like digits: scikit-learn's 8x8
digits, upsampled (cubic) to a 20x20 box in a 28x28 frame, as MNIST centres its
digits, each copy under its own random rotation, shear, scale, shift, contrast and
stroke weight; 256 levels. It writes ``--images`` of them as IDX files and then, in
one run and one scratch folder (nothing in the repository is written), runs the
project's own stages as DVC would (``python -m rnnexp.stages.<stage>``, params.yaml
with ``--set`` overrides, no MLflow run): fetch (``data.source=idx``) and prepare
(256 levels), the classifier stage (timed), the train stage for 3 epochs of the
default Row LSTM (``train.use_tuned=false``; timed). Both timings are whole
processes, start-up included. Then the classifier stage on params.yaml's own data
(scikit-learn's 8x8 digits, 17 levels).

The digits behind the IDX files are four fifths of scikit-learn's 1,797; the
classifier is also scored on copies of the other fifth ("unseen digits"), since the
prepared test split holds other copies of the very digits it was trained on.
When Debian's dataset-fashion-mnist is installed (and without ``--no-fashion``) the
classifier stage also runs on the first ``--images`` Fashion-MNIST images.

``--threads T`` sets ``train.threads`` and ``evaluate.classifier_threads`` alike. On
a 2-core machine that other jobs keep busy, torch's default (a thread per core) can
make both stages many times slower (a Row LSTM step at load 5 took 1 s with one
thread and up to 19 s with two), so compare them there with ``--threads 1``.

Usage: python benchmarks/classifier.py [--images N] [--threads T] [--no-fashion]
    [--no-train] [--keep]
Targets (issue "a search that pays"): classifier stage <= 10% of the 3 training
epochs on 10,000 images; test accuracy >= 97% on digits and on MNIST-like data.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
HELD_OUT = 0.2  # fraction of the scikit-learn digits kept out of the IDX files


def mnist_like(images8: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 digits drawn from ``images8`` (M, 8, 8) in 0..16: (images, picks).

    Each: cubic upsampling to 20x20, placed in the middle of 28x28 (MNIST's layout),
    then a random affine map (rotation +-12 deg, shear +-0.2, scale 0.85..1.1, shift
    +-2 px), contrast x1..1.6 and a gamma of 0.7..1.3 (stroke weight).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(images8), n)
    out = np.zeros((n, 28, 28), np.uint8)
    centre = np.array([13.5, 13.5])
    for k, i in enumerate(picks):
        canvas = np.zeros((28, 28))
        canvas[4:24, 4:24] = np.clip(ndimage.zoom(images8[i] / 16.0, 20 / 8, order=3), 0, 1)
        angle, shear = np.deg2rad(rng.uniform(-12, 12)), rng.uniform(-0.2, 0.2)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) / rng.uniform(0.85, 1.1)
        offset = centre - matrix @ (centre + rng.uniform(-2, 2, 2))  # output -> input map
        warped = ndimage.affine_transform(canvas, matrix, offset=offset, order=1)
        warped = np.clip(warped * rng.uniform(1.0, 1.6), 0, 1) ** rng.uniform(0.7, 1.3)
        out[k] = np.round(warped * 255).astype(np.uint8)
    return out, picks


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of the uint8 ``array`` (magic 0x08 = unsigned byte, then ndim)."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return (0x0800 | array.ndim).to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The train pair of MNIST's file names (the idx source needs no t10k pair)."""
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return folder


def stage(name: str, work: Path, env: dict, *args: str) -> float:
    """Run ``python -m rnnexp.stages.<name>`` in ``work``; its wall time in seconds."""
    cmd = [sys.executable, "-m", f"rnnexp.stages.{name}", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd[2:])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def sets(*pairs: str) -> list[str]:
    return [a for pair in pairs for a in ("--set", pair)]


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def idx_data(idx: Path) -> list[str]:
    """The overrides that make the stages read the IDX files in ``idx`` at 256 levels."""
    return sets("data.source=idx", f"data.path={idx}", "data.levels=256")


def classify(work: Path, env: dict, name: str, data: list[str], common: list[str]) -> float:
    """fetch + prepare ``data`` into work/<name>; the classifier stage's seconds."""
    raw, prepared = f"{name}/raw", f"{name}/prepared"
    stage("fetch", work, env, "--out", raw, *data, *common)
    stage("prepare", work, env, "--raw", raw, "--out", prepared, *data, *common)
    out = f"{name}/classifier.pt"
    return stage("classifier", work, env, "--prepared", prepared, "--out", out, *data, *common)


def report(work: Path, name: str, seconds: float) -> tuple[object, dict]:
    from rnnexp.evaluation.classifier import load_classifier

    model, info = load_classifier(work / name / "classifier.pt")
    print(
        f"{name}: classifier stage {seconds:.1f} s, {info['epochs']} epochs of "
        f"{info['epoch_images']} images (max {info['max_epochs']}, patience "
        f"{info['patience']}), best epoch {info['best_epoch']}, stopped early "
        f"{info['stopped_early']}, val accuracy {info['val_accuracy']:.4f}, "
        f"test accuracy {info['test_accuracy']:.4f} ({load()})"
    )
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="images of the data set")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: params.yaml)")
    parser.add_argument("--no-fashion", action="store_true", help="skip Fashion-MNIST")
    parser.add_argument("--no-train", action="store_true", help="skip the 3 training epochs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    from rnnexp.evaluation.classifier import accuracy

    digits = load_digits()
    base = np.random.default_rng(0).permutation(len(digits.images))
    cut = int(round(len(base) * (1 - HELD_OUT)))
    seen, unseen = base[:cut], base[cut:]
    images, picks = mnist_like(digits.images[seen], args.images, seed=1)
    labels = digits.target[seen][picks]
    held, held_picks = mnist_like(digits.images[unseen], 2000, seed=2)
    held_labels = digits.target[unseen][held_picks]

    work = Path(tempfile.mkdtemp(prefix="rnnexp-bench-classifier-"))
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    env = {**os.environ, "CI": "true", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    common = sets("tracking.enabled=false")
    if args.threads:
        common += sets(
            f"train.threads={args.threads}", f"evaluate.classifier_threads={args.threads}"
        )
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; {load()}")
    try:
        data = idx_data(write_idx(work / "idx", images, labels))
        seconds = classify(work, env, "mnist_like", data, common)
        model, _ = report(work, "mnist_like", seconds)
        unseen_acc = accuracy(model, held[:, None], held_labels)
        print(f"mnist_like: accuracy on 2,000 copies of unseen digits {unseen_acc:.4f}")
        if not args.no_train:
            epochs = sets("train.max_epochs=3", "train.use_tuned=false")
            out = ("--prepared", "mnist_like/prepared", "--out", "mnist_like/models")
            train = stage("train", work, env, *out, *data, *epochs, *common)
            print(f"train: 3 epochs of the default Row LSTM {train:.1f} s ({load()})")
            print(f"ratio classifier / 3 training epochs: {seconds / train:.3f} (target <= 0.10)")
        report(work, "digits", classify(work, env, "digits", [], common))  # params.yaml's data
        if not args.no_fashion and FASHION.is_dir():
            from rnnexp.data.idx import load_idx

            fashion = load_idx(FASHION)  # (70000, 28, 28, 1): train, then t10k
            n = args.images
            idx = write_idx(work / "fashion_idx", fashion.images[:n, ..., 0], fashion.labels[:n])
            report(work, "fashion", classify(work, env, "fashion", idx_data(idx), common))
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
