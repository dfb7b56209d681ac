"""Operator tools: `sluice doctor` (connection budget and config checks) and `sluice capacity`
(sizing from a queueing model). Installed with the `ops` extra; not in the service images."""
