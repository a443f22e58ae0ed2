"""Benchmarks of storage-manager against nginx, docker-registry, curl, oras-py and skopeo.

Run with ``python -m tests.bench [--quick] [--out bench.json]`` (or ``tox -e bench``). Every
server listens on 127.0.0.1 only, every process started is stopped, and the run is bounded in
time (``--time-limit``). Missed targets are reported, never fatal: the exit status is non-zero
only when a server could not be measured. Not part of the pytest suite.

System tools it needs (Debian)::

    apt-get install nginx-light wrk hey docker-registry skopeo curl

``wrk`` (with a Lua ``request()`` picking a random offset per request) drives the Range loads;
``hey`` the HEAD load, because wrk 4.1 cannot complete a HEAD answer that has a
Content-Length (see ``loads.py``).

Modules: ``harness`` (nginx, wrk, curl, RSS sampling, machine info), ``loads`` (hey, oras-py,
skopeo), ``run`` (fixtures and scenarios), ``report`` (targets, table, JSON), ``array`` (the
cache array: 8 nodes pulling one model, ``--only array``) and ``wan`` (its rate-capped origin).
"""
