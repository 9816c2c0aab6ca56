"""System metrics of a run: MLflow's own monitor, started and stopped by ``tracked_run``.

MLflow starts its :class:`SystemMetricsMonitor` from the fluent
``mlflow.start_run(log_system_metrics=True)``; our runs are opened through
:class:`MlflowClient`, so :func:`start_monitor` starts it on the run's id, and
:func:`stop_monitor` stops it before the run ends. The metrics are MLflow's:
``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``,
``system/system_memory_usage_percentage``, ``system/disk_*``, ``system/network_*``,
and ``system/gpu_*`` where pynvml (NVIDIA) or pyrsmi (AMD) finds a GPU, sampled every
:data:`SAMPLING_INTERVAL_S` seconds (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
and ``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`` override, as in MLflow).

Two promises beyond MLflow's monitor:

- the samples taken since the last logging are logged when the run stops (at least
  one sample each run, however short), so a run's system metrics never come up empty;
- nothing is logged after the run has ended: the monitor thread is given
  :data:`JOIN_TIMEOUT_S` to finish (it may be waiting on an unreachable server), then
  closed, and a closed monitor logs nothing more.
"""

from __future__ import annotations

import logging
import threading
import time

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from rnnexp.tracking._store import UNREACHABLE, fail_fast, first_line

log = logging.getLogger(__name__)

SAMPLING_INTERVAL_S = 10.0  # MLflow's default: one psutil sample, one log_batch per 10 s
JOIN_TIMEOUT_S = 15.0  # how long stopping waits for the monitor thread


class RunMonitor(SystemMetricsMonitor):
    """MLflow's monitor, logging through our client, closable, and quiet on the console."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str, resumed: bool) -> None:
        super().__init__(
            run_id,
            sampling_interval=SAMPLING_INTERVAL_S,
            samples_before_logging=1,
            resume_logging=resumed,  # continue the steps of a resumed run
            tracking_uri=uri,
        )
        self._client = client
        self._lock = threading.Lock()
        self._closed = False

    def _initialize_gpu_monitor(self):  # noqa: ANN202 (MLflow's signature)
        # MLflow's version logs "Skip logging GPU metrics" at INFO on every run without
        # a GPU; try the same monitors, quietly.
        for monitor in (GPUMonitor, ROCMMonitor):
            try:
                return monitor()
            except Exception:  # no driver, no library, no device
                continue
        return None

    def start(self) -> None:
        """Start the sampling thread (a daemon: it never keeps the process alive)."""
        self._process = threading.Thread(
            target=self.monitor, daemon=True, name=f"system-metrics-{self._run_id[:8]}"
        )
        self._process.start()

    def publish_metrics(self, metrics: dict[str, float]) -> None:
        """Log ``metrics`` as ``system/<name>`` at the next step, unless closed."""
        prefix = self._metrics_prefix + (f"{self.node_id}/" if self.node_id else "")
        now = int(time.time() * 1000)
        items = [Metric(prefix + k, float(v), now, self._logging_step) for k, v in metrics.items()]
        with self._lock:
            if self._closed:
                return
            if items:
                self._client.log_batch(self._run_id, metrics=items)
            self._logging_step += 1
        for monitor in self.monitors:
            monitor.clear_metrics()

    def stop(self) -> None:
        """Stop sampling, log the samples not yet logged, and close: nothing is logged after."""
        self._shutdown_event.set()
        thread, self._process = self._process, None
        if thread is not None:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():  # stuck on a request to an unreachable store
                self._closed = True
                log.warning("system metrics of run %s: monitor did not stop; closed", self._run_id)
                return
        try:
            if not any(m.metrics for m in self.monitors):
                self.collect_metrics()  # a run shorter than one sampling interval
            with fail_fast():
                self.publish_metrics(self.aggregate_metrics())
        except UNREACHABLE as exc:
            log.warning("system metrics of run %s not logged: %s", self._run_id, first_line(exc))
        finally:
            self._closed = True


def start_monitor(client: MlflowClient, run_id: str, uri: str, resumed: bool) -> RunMonitor | None:
    """A started :class:`RunMonitor` on run ``run_id``, or None (with a warning) if it fails."""
    try:
        monitor = RunMonitor(client, run_id, uri, resumed)
        monitor.start()
    except Exception as exc:  # psutil missing or broken: the run goes on without
        log.warning("system metrics of run %s off: %s", run_id, first_line(exc))
        return None
    return monitor


def stop_monitor(monitor: RunMonitor | None) -> None:
    """Stop ``monitor`` (None: nothing to stop); never raises for the monitor's sake."""
    if monitor is None:
        return
    try:
        monitor.stop()
    except Exception as exc:
        log.warning("system metrics: stopping the monitor failed: %s", first_line(exc))
