"""The worker tests that need a stack of their own (its own Postgres, Redis and workers,
started per module with the module's FAULT_ENV) use the fault suite's fixture."""

from tests.faults.conftest import fault_stack

__all__ = ["fault_stack"]
