"""Fast in-process tests (no server process): real stores in temp dirs, twisted.web requests."""
