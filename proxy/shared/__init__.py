"""The shared second tier: an object store (S3, GCS, Azure) every node of a
cluster reads before the origin and writes back to (issue 22).

Rooms: :mod:`.location` (``--shared-store`` values and the layout in the
store), :mod:`.record` (an entry's record), :mod:`.store` (the
:class:`~.store.SharedStore` interface and :func:`~.opening.open_store`),
:mod:`.s3`, :mod:`.gcs`, :mod:`.azure` (one implementation per store),
:mod:`.wire` (requests with streamed bodies, streamed answers),
:mod:`.lease` (cluster single flight through conditional writes).
"""
