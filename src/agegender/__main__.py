"""``python -m agegender``: the ``agegender`` command."""

import sys

from agegender.cli import main

sys.exit(main())
