"""``--workers`` above 1 chooses prometheus_client's multiprocess mode by
setting ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is first
imported (it picks how values are kept at import time). So the command line
and the configuration must load without it: when a fetcher (and through it
proxy.metrics) came in with ``proxy.config``, every writer's counter stayed
in its own memory and /metrics summed only the readers'."""

from __future__ import annotations

import subprocess
import sys


def test_the_command_line_loads_without_prometheus_client() -> None:
    code = "import sys, proxy.cli; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
