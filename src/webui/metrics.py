"""The webui's metrics, served on their own port (WEBUI_METRICS_PORT), never by the API.

The API port is what the Route exposes; metrics on it were readable by anyone and
labelled with whatever paths anyone sent. Here:
* HTTP series are labelled by route template (`/api/v1/files/{file_id}`); a path that
  matches no route is `none`. The app does not redirect trailing slashes, which is
  what let raw paths through (the instrumentator labels a redirect with the path).
* the port is scraped from inside the cluster (ServiceMonitor); NetworkPolicy admits
  only the monitoring namespace to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from threading import Thread
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_fastapi_instrumentator import Instrumentator

from shared.settings import Settings

log = logging.getLogger("sluice.webui")


@dataclass
class WebuiMetrics:
    registry: CollectorRegistry
    upload_storage_errors: Counter = field(init=False)
    auth_failures: Counter = field(init=False)
    event_streams: Gauge = field(init=False)
    upload_admission_waiting: Gauge = field(init=False)

    def __post_init__(self) -> None:
        self.upload_storage_errors = Counter(
            "sluice_upload_storage_errors", "Uploads refused because the upload volume refused a "
            "write (reason: full | unwritable); any increase needs an operator.",
            ["reason"], registry=self.registry,
        )
        self.auth_failures = Counter(
            "sluice_auth_failures", "Failed authentications (outcome: refused | rate_limited).",
            ["outcome"], registry=self.registry,
        )
        self.event_streams = Gauge(
            "sluice_event_streams_open", "Event streams open in this process.",
            registry=self.registry,
        )
        self.upload_admission_waiting = Gauge(
            "sluice_upload_admission_waiting", "Uploads in this process waiting for a place "
            "to use Postgres (UPLOAD_ADMISSION_SLOTS), served oldest request first.",
            registry=self.registry,
        )


def instrument(app: FastAPI, registry: CollectorRegistry) -> None:
    """HTTP request metrics, labelled by route template; not exposed on the app."""
    Instrumentator(registry=registry, should_group_untemplated=True).instrument(app)


class MetricsServer:
    """`/metrics` on WEBUI_METRICS_PORT from a thread (0 = not served)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry):
        self._server: Any = None
        self._thread: Thread | None = None
        port = settings.webui_metrics_port
        if port == 0:
            log.info("webui.metrics disabled (WEBUI_METRICS_PORT=0)")
            return
        try:
            self._server, self._thread = start_http_server(
                port, settings.webui_metrics_host, registry=registry
            )
        except OSError as err:  # the port is taken: keep serving the API, say so
            log.warning("webui.metrics_not_served port=%d error=%s", port, err)
            return
        log.info("webui.metrics serving http://%s:%d/metrics", settings.webui_metrics_host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
