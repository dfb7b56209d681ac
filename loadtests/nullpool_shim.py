"""`sluice …` with NullPool given a `checkedout()` that returns 0 — for the seed-setup run only.

Works around a bug in src/worker/runtime.py: `Runtime.facts()` calls
`engine.pool.checkedout()`, which SQLAlchemy's NullPool does not have, so
`sluice worker` with DATABASE_POOL_SIZE=0 + DATABASE_EXTERNAL_POOLER=true dies
at boot with AttributeError. Only the published fact `db_checked_out` is
affected (it reads 0). Does nothing once NullPool has the method or the
worker stops calling it.
"""

from __future__ import annotations

import sys

from sqlalchemy.pool import NullPool

if __name__ == "__main__":
    if not hasattr(NullPool, "checkedout"):
        NullPool.checkedout = lambda self: 0  # type: ignore[attr-defined]
    from shared.cli import main

    sys.exit(main())
