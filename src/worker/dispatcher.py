"""The worker's background loop: dispatch passes, and fresh facts while idle.

Runs a dispatch pass (`shared.dispatch`) whenever someone wakes the dispatcher (an
upload committed, a unit claimed or finished) and at least every DISPATCH_INTERVAL;
only one process runs a pass at a time. Also publishes the worker's facts every
JOB_MONITORING_INTERVAL, so they stay fresh while the worker has no job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from rq import Worker
from sqlalchemy.exc import SQLAlchemyError

from shared.dispatch import dispatch_once
from shared.work import WAKE_KEY
from worker.runtime import Runtime

log = logging.getLogger("sluice.dispatch")


class DispatcherThread(threading.Thread):
    def __init__(self, runtime: Runtime, publish_facts: Callable[[], None]):
        super().__init__(name="sluice-dispatcher", daemon=True)
        self._rt = runtime
        self._publish_facts = publish_facts
        self._stop_event = threading.Event()

    def run(self) -> None:
        rt, settings = self._rt, self._rt.settings
        next_facts = 0.0
        while not self._stop_event.is_set():
            try:
                rt.redis.blpop([WAKE_KEY], timeout=settings.dispatch_interval)
                workers = Worker.count(connection=rt.redis, queue=rt.queue)
                dispatch_once(rt.session_factory, rt.queue, settings, workers)
            except (RedisError, SQLAlchemyError) as err:
                log.warning("dispatch.skipped error=%s", err)
                self._stop_event.wait(settings.dispatch_interval)
            except Exception:
                log.exception("dispatch.error")
                self._stop_event.wait(settings.dispatch_interval)
            if time.monotonic() >= next_facts:
                self._publish_facts()
                next_facts = time.monotonic() + settings.job_monitoring_interval

    def stop(self) -> None:
        self._stop_event.set()
