"""What the routes ask for: downloads (single flight, jobs), eviction and
upkeep, the mirror, and the sources of blobs. It speaks no HTTP."""
