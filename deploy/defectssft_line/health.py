"""Line health: verdict counts, a reject-rate / score-drift alarm and optional Prometheus metrics.

The alarm looks at the last ``window`` parts (``--alarm-window``, default 200):

- reject rate: the share of NG + UNSURE is above ``--alarm-reject-rate R``. Set R from the
  reject rate seen on validation parts (e.g. twice it): a jump means the process changed, or
  the camera or the light did.
- score drift: the window's mean defect score moved more than ``--alarm-score-drift D`` from
  the mean of the first full window of the run.

An alarm raised or cleared is one log line and is shown in the status (OPC UA ``Alarm`` and
``Status``, the MQTT status topic, Modbus register 8, metrics). ``--metrics-port P`` serves
Prometheus metrics on ``--metrics-host`` (default 127.0.0.1): ``defectssft_line_verdicts_total``
by verdict, ``defectssft_line_latency_seconds`` (histogram), ``defectssft_line_reject_rate``,
``defectssft_line_alarm``, ``defectssft_line_sink_dropped`` by sink, and
``defectssft_line_archive_failures``. Needs the ``metrics`` extra for the metrics only.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from defectssft_line.model import LineError

REJECTS = ("NG", "UNSURE")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Health:
    def __init__(
        self,
        window: int = 200,
        reject_rate: float | None = None,
        score_drift: float | None = None,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        self.window = max(1, int(window))
        self.reject_limit, self.drift_limit = reject_rate, score_drift
        self._log = log
        self.counts: dict[str, int] = {}
        self._rejects: deque[bool] = deque(maxlen=self.window)
        self._scores: deque[float] = deque(maxlen=self.window)
        self._score_sum = 0.0
        self.reference_score: float | None = None
        self.alarm = ""  # why, or "" when none
        self.alarms_raised = 0
        self._metrics: Any = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reject_rate(self) -> float | None:
        return sum(self._rejects) / len(self._rejects) if self._rejects else None

    def mean_score(self) -> float | None:
        return self._score_sum / len(self._scores) if self._scores else None

    def observe(self, rec: dict[str, Any]) -> None:
        verdict = str(rec.get("verdict"))
        self.counts[verdict] = self.counts.get(verdict, 0) + 1
        if verdict != "ERROR":
            self._rejects.append(verdict in REJECTS)
        score = rec.get("score")
        if score is not None:
            if len(self._scores) == self._scores.maxlen:
                self._score_sum -= self._scores[0]
            self._scores.append(float(score))
            self._score_sum += float(score)
            if self.reference_score is None and len(self._scores) == self.window:
                self.reference_score = self.mean_score()
        self._check()
        if self._metrics is not None:
            self._metrics.observe(rec, self)

    def _check(self) -> None:
        why = ""
        rate = self.reject_rate()
        if (
            self.reject_limit is not None
            and len(self._rejects) == self.window
            and rate is not None
            and rate > self.reject_limit
        ):
            why = (
                f"reject rate {rate:.1%} over the last {self.window} parts is above "
                f"{self.reject_limit:.1%}"
            )
        mean = self.mean_score()
        if (
            not why
            and self.drift_limit is not None
            and self.reference_score is not None
            and mean is not None
            and abs(mean - self.reference_score) > self.drift_limit
        ):
            why = (
                f"mean score {mean:.3f} over the last {self.window} parts drifted from "
                f"{self.reference_score:.3f} by more than {self.drift_limit:g}"
            )
        if why and why.split()[:2] != self.alarm.split()[:2]:  # raised, or another reason
            self.alarms_raised += 1
            self._log(f"ALARM: {why}")
        elif self.alarm and not why:
            self._log(f"alarm cleared ({self.alarm})")
        self.alarm = why

    def status(self) -> dict[str, Any]:
        rate = self.reject_rate()
        return {
            "counts": dict(self.counts),
            "reject_rate": None if rate is None else round(rate, 4),
            "alarm": self.alarm,
        }

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> None:
        self._metrics = Metrics(port, host)

    def update_gauges(self, sinks: dict[str, int], archive_failures: int) -> None:
        if self._metrics is not None:
            self._metrics.gauges(sinks, archive_failures)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()


class Metrics:
    """Prometheus metrics on their own registry, served over HTTP."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        try:
            import prometheus_client as pc
        except ImportError as e:
            raise LineError(
                "--metrics-port needs the metrics extra: pip install 'defectssft-line[metrics]'"
            ) from e
        self.registry = reg = pc.CollectorRegistry()
        p = "defectssft_line_"
        self.verdicts = pc.Counter(p + "verdicts", "parts by verdict", ["verdict"], registry=reg)
        self.latency = pc.Histogram(
            p + "latency_seconds",
            "frame to verdict",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=reg,
        )
        self.reject_rate = pc.Gauge(p + "reject_rate", "NG+UNSURE share, window", registry=reg)
        self.alarm = pc.Gauge(p + "alarm", "1 while the alarm is raised", registry=reg)
        self.dropped = pc.Gauge(p + "sink_dropped", "messages dropped", ["sink"], registry=reg)
        self.archive_failures = pc.Gauge(p + "archive_failures", "parts not archived", registry=reg)
        try:
            got = pc.start_http_server(port, addr=host, registry=reg)
        except OSError as e:
            raise LineError(f"metrics: cannot listen on {host}:{port} ({e.strerror or e})") from e
        self._server = got[0] if isinstance(got, tuple) else None

    def observe(self, rec: dict[str, Any], health: Health) -> None:
        self.verdicts.labels(str(rec.get("verdict"))).inc()
        if rec.get("latency_ms") is not None:
            self.latency.observe(float(rec["latency_ms"]) / 1000.0)
        rate = health.reject_rate()
        if rate is not None:
            self.reject_rate.set(rate)
        self.alarm.set(1 if health.alarm else 0)

    def gauges(self, sinks: dict[str, int], archive_failures: int) -> None:
        for name, n in sinks.items():
            self.dropped.labels(name).set(n)
        self.archive_failures.set(archive_failures)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
