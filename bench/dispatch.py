"""Training off the hot path: 1 vs 2 workers, through the local process pool, a Dask cluster and Celery on Redis.

`--rules` training jobs (one per rule, `--series` series each, a CPU-bound model: AutoETS by default) are
queued at once, as a daemon does when many rules fall due together. Each job runs the production path: a range
query over 14 days at 5 minutes against a Prometheus-API source (the demo's generated series, served from its own
process), the fit, the store write. Printed:
- speed-up of 2 workers over 1, for the local pool (worker processes of the daemon), for the dask dispatcher
  (`dask scheduler` and `dask worker` processes on loopback, 1 thread each) and for Celery (separate
  `oa-exporter worker` processes, concurrency 1 each) — target >= 1.7x on 2 cores;
- dispatch overhead per job: a one-series SeasonalProfile job end to end (query, fit, store; for Dask the
  history's trip to a worker and back; for Celery the broker round trip and the daemon loading the model) minus
  the same work with the engine called directly.
Last line: one JSON object.
"""

from __future__ import annotations

import asyncio
import os
import sys

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

if __name__ == "__main__":
    # Every training process re-imports this main module (multiprocessing does), as it re-imports the CLI in
    # production: keep it as light as the CLI, so the overhead measured is the one users get.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _dispatch import main

    asyncio.run(main(__doc__.splitlines()[0]))
