"""``python -m proxy``: the storage-manager command."""

import sys

from proxy.cli import main

sys.exit(main())
