"""``python -m include.registry``: see :func:`include.registry.cli.main`."""

import sys

from include.registry.cli import main

sys.exit(main())
