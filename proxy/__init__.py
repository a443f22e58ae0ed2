"""storage-manager: a per-node content-addressed cache for AI workloads."""

__version__ = "0.1.0"
