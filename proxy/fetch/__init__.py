"""Downloaders, one module per URL scheme, behind one interface (base.Fetcher)."""
