"""One log format for every process: time, level, logger, `event key=value …`."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    # Libraries that chat at INFO about every request or model file.
    for noisy in ("httpx", "sentence_transformers", "transformers", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
