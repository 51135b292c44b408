"""``python -m include.deployment``: see :mod:`include.deployment`."""

import sys

from include.deployment import main

sys.exit(main())
