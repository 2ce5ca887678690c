"""``python -m firmware_tools`` is the ``igris-fw`` command."""

import sys

from firmware_tools.cli import main

sys.exit(main())
