"""``rnnexp replay``: send the logging a tracking-server outage left undelivered.

A stage that could not reach the MLflow store saves what it could not log to
``mlflow-undelivered/<run_id>.json``. Once the store answers again, this command
sends each file to its run, in order and exactly once per item (a replay that is
killed and run again logs nothing twice), ends the run with the status the file
records, and removes a file only once all of it is delivered. The rules are in
``rnnexp.tracking._replay``.

Exit status: 0 when everything was delivered (or there was nothing to send); 1
when some items could not be sent (they stay in their file, with the reason); 2
for a malformed file or a store that cannot be reached (nothing is touched).
"""

from __future__ import annotations

from typing import Any


def main(args: Any, params: Any) -> int:
    """Replay ``args.files`` (default: every undelivered file); print one line per file."""
    from rnnexp import tracking

    lines, complete = tracking.replay_undelivered(args.files, args.tracking_uri)
    for line in lines:
        print(line)
    return 0 if complete else 1
