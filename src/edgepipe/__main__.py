"""``python -m edgepipe``: the same as the ``edgepipe`` command."""

import sys

from edgepipe.cli.main import main

sys.exit(main())
