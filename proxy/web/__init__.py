"""HTTP plumbing: the site and its access log, the connection and its fast
path, sendfile, byte ranges, bearer/basic auth. It knows no cache and no
fetcher: what it serves is handed to it (see :mod:`proxy.server`)."""
