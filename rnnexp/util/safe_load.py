"""Read ``torch.save`` files without ever running code from them.

Every ``.ckpt`` / ``.pt`` file rnnexp reads (generator checkpoints, the scoring
classifier) goes through :func:`load_weights`: the file must be a complete zip
archive (what ``torch.save`` writes), and it is unpickled with
``torch.load(weights_only=True)``, which refuses any object that is not a tensor
or a plain container, so a pickle that would run code is refused, not run.

Example:
    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
    >>> torch.save({"w": torch.zeros(2)}, path)
    >>> load_weights(path)["w"].shape
    torch.Size([2])
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from rnnexp.errors import RnnexpError


def load_weights(path: str | Path, what: str = "checkpoint", map_location: str = "cpu") -> Any:
    """The object stored in the ``torch.save`` file ``path``, loaded with weights_only=True.

    Args:
        path: the file (must exist: callers say how to make a missing one).
        what: how the file is called in messages ("checkpoint", "classifier checkpoint").

    Raises:
        RnnexpError: with the path: "not a readable {what}" for a file that is not a
            complete torch zip archive (truncated, corrupt, a text file, a bare
            pickle), "refused to load" for one holding objects other than weights.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        # Anything but a complete archive is never handed to the unpickler.
        raise RnnexpError(
            f"{path}: not a readable {what} (truncated or corrupt?): not a complete "
            "PyTorch zip archive"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message starts with advice to retry with weights_only=False (which
        # would run the file's code); keep only the line that says what was refused.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        refused = next((x for x in lines if "GLOBAL" in x or "Unsupported" in x), None)
        raise RnnexpError(
            f"{path}: refused to load: the {what} holds Python objects other than plain "
            f"weights ({refused or type(exc).__name__}); rnnexp loads it with "
            "weights_only=True and never runs code from it"
        ) from None
    except Exception as exc:  # a damaged archive raises RuntimeError, KeyError and others
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RnnexpError(
            f"{path}: not a readable {what} (truncated or corrupt?): {first}"
        ) from None
