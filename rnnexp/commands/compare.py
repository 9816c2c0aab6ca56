"""Side-by-side tables of trained models: key params and metrics of MLflow runs.

The terminal's counterpart of MLflow's compare view: ``rnnexp compare`` reads the
runs through :func:`rnnexp.tracking.find_runs` (this module imports no mlflow) and
prints one row per run, as aligned text, CSV or a Markdown table.

Example:
    >>> runs = [{"run_id": "ab12", "run_name": "r1", "status": "FINISHED", "tags": {},
    ...          "params": {"model.arch": "row_lstm"}, "metrics": {"test/bpd": 1.234567}}]
    >>> columns, rows = compare_table(runs, params=["model.arch"], metrics=["test/bpd"])
    >>> print(format_table(columns, rows, "text"), end="")
    run_id  run_name  status    dvc_exp  model.arch  test/bpd
    ------  --------  --------  -------  ----------  --------
    ab12    r1        FINISHED           row_lstm      1.2346
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rnnexp.config import Params
from rnnexp.errors import RnnexpError

KEY_PARAMS: tuple[str, ...] = (
    "model.arch",
    "model.hidden",
    "model.layers",
    "train.lr",
    "train.max_epochs",
    "data.task",
)
KEY_METRICS: tuple[str, ...] = (
    "best/val_bpd",
    "test/bpd",
    "test/nll_nats",
    "baseline/nll_nats",
)
RUN_COLUMNS: tuple[str, ...] = ("run_id", "run_name", "status", "dvc_exp")
FORMATS: tuple[str, ...] = ("text", "csv", "markdown")

Cell = str | float | int | None


def compare_table(
    runs: Sequence[Mapping[str, Any]],
    params: Sequence[str] = KEY_PARAMS,
    metrics: Sequence[str] = KEY_METRICS,
) -> tuple[list[str], list[list[Cell]]]:
    """Columns and one row per run: run id, name, status, DVC experiment, params, metrics.

    ``runs`` are the dicts of :func:`rnnexp.tracking.find_runs`. Cells keep their raw
    values (params: the logged strings; metrics: floats); a param or metric the run
    lacks is None. :func:`format_table` renders them.
    """
    columns = [*RUN_COLUMNS, *params, *metrics]
    rows: list[list[Cell]] = []
    for run in runs:
        run_params, run_metrics = run.get("params", {}), run.get("metrics", {})
        rows.append(
            [
                run["run_id"],
                run.get("run_name") or "",
                run.get("status") or "",
                run.get("tags", {}).get("rnnexp.dvc_exp"),
                *(run_params.get(k) for k in params),
                *(run_metrics.get(k) for k in metrics),
            ]
        )
    return columns, rows


def format_number(value: float) -> str:
    """A metric for people: 4 decimals (1.2346, 1523.4568); scientific when tiny or huge."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e9:
        return f"{value:.4f}"
    return f"{value:.4g}"


def _human(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float):
        return format_number(cell)
    return str(cell)


def _machine(cell: Cell) -> str:
    if cell is None:
        return ""
    return repr(cell) if isinstance(cell, float) else str(cell)  # repr: shortest exact float


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric_columns(columns: Sequence[str], cells: list[list[str]]) -> list[bool]:
    """Which columns hold only numbers (right-aligned), among their non-empty cells."""
    numeric = []
    for j in range(len(columns)):
        values = [row[j] for row in cells if row[j]]
        numeric.append(bool(values) and all(_is_number(v) for v in values))
    return numeric


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Cell]], fmt: str = "text") -> str:
    """Render :func:`compare_table`'s output as ``text``, ``csv`` or ``markdown``.

    ``text``: columns separated by two spaces under a dashed rule, numbers right-aligned.
    ``markdown``: a GitHub table, numeric columns right-aligned. Both show metrics with
    4 decimals (:func:`format_number`). ``csv``: exact values (floats round-trip), for
    spreadsheets and scripts. Missing values are empty cells. Ends with a newline.
    """
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_machine(c) for c in row] for row in rows)
        return buffer.getvalue()
    cells = [[_human(c) for c in row] for row in rows]
    numeric = _numeric_columns(columns, cells)
    if fmt == "markdown":

        def line(values: Sequence[str]) -> str:
            return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

        rule = ["---:" if n else "---" for n in numeric]
        return "\n".join([line(columns), "|" + "|".join(rule) + "|", *map(line, cells)]) + "\n"
    if fmt == "text":
        widths = [
            max(len(v) for v in [name, *(row[j] for row in cells)])
            for j, name in enumerate(columns)
        ]

        def line(values: Sequence[str]) -> str:
            padded = [
                v.rjust(w) if n else v.ljust(w)
                for v, w, n in zip(values, widths, numeric, strict=True)
            ]
            return "  ".join(padded).rstrip()

        rule = ["-" * w for w in widths]
        return "\n".join([line(columns), line(rule), *map(line, cells)]) + "\n"
    raise RnnexpError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")


def compare_runs(
    params: Params,
    run_ids: Sequence[str] | None = None,
    experiment: str | None = None,
    dvc_exp: str | None = None,
    fmt: str = "text",
) -> str:
    """The ``rnnexp compare`` command: the table of the selected train runs, rendered.

    Without ``run_ids``, the train runs of ``experiment`` (default
    ``tracking.experiment``), optionally of one DVC experiment, newest first. Raises
    :class:`RnnexpError` when the selection is empty or a run/experiment is unknown, and
    (within seconds) when the store does not answer or is not an MLflow store.
    """
    from rnnexp.tracking import find_runs, probe_store, tracking_uri

    if fmt not in FORMATS:
        raise RnnexpError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    # An unreachable server or a damaged store: one message within seconds, not a
    # traceback after MLflow's minutes of retries. A read: compare creates nothing.
    probe_store(params, write=False)
    runs = find_runs(params, list(run_ids or []) or None, experiment=experiment, dvc_exp=dvc_exp)
    if not runs:
        where = f"experiment {experiment or params.tracking.experiment!r}"
        if dvc_exp:
            where += f", DVC experiment {dvc_exp!r}"
        raise RnnexpError(f"no train runs in {where} of the MLflow store {tracking_uri(params)}")
    return format_table(*compare_table(runs), fmt)


def main(args: Any, params: Params) -> None:
    """Print the comparison table of the selected runs."""
    sys.stdout.write(
        compare_runs(
            params, args.run_ids, experiment=args.experiment, dvc_exp=args.dvc_exp, fmt=args.format
        )
    )
