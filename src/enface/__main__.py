"""``python -m enface``: the ``enface`` command line."""

import sys

from enface.cli import main

sys.exit(main())
