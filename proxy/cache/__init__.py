"""The cache on disk: layout, ingest and entries."""
