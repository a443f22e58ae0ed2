"""HTTP APIs over the cache: /content, health, and the root dispatcher."""
