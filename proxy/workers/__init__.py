"""Several serving processes (``--workers N``): one writer, N-1 readers.

The writer is the process ``storage-manager serve`` starts: it takes the
cache's lock and owns every change (downloads, ``index.json``, eviction,
pushes, imports, mirror fills, last-used.json), as the one-writer rule of
DESIGN.md says, and serves like a single process does. It spawns the readers
(:mod:`proxy.workers.supervisor`), each given the listening socket itself
(one socket, inherited: every process accepts from the same queue, and a
reader that dies loses no queued connection, which ``SO_REUSEPORT``'s
per-process queues would) and one end of a Unix socket pair to the writer
(:mod:`proxy.workers.link`).

A reader (:mod:`proxy.workers.reader`) opens the cache read-only and
answers what a committed cache answers alone: ``/v2`` blob, manifest, tag,
catalog and referrer reads (the mirror's misses aside) and ``/hf``. Every other
request (``/metrics`` and ``/content`` among them) -- and every
request while its view of ``index.json`` is older than the file -- is handed
to the writer before its body is read: the connection's descriptor goes over
the socket pair (``SCM_RIGHTS``) with the bytes read so far, and the writer
serves that connection from then on. No byte of the exchange is copied
through a reader (the kernel moves a push's body and a fill's answer between
the client and the writer), and the writer sees the client's own address.

Why a held descriptor rather than a generation counter: a reader keeps the
``index.json`` it loaded open, so that file's inode cannot be reused, and
one ``stat`` of the path (about a microsecond, on the ordinary path only;
the fast blob path needs no index) tells whether the writer has renamed a
newer one into place. Then the request goes to the writer, which is never
stale, and the reader reloads in a thread; inotify starts that reload as
soon as the writer's rename lands, so usually no request is handed off for
it. A reader is therefore never behind an answered change: the writer
renames ``index.json`` before it answers.
"""
