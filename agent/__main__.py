"""``python -m agent`` is the ``igris`` command."""

import sys

from agent.cli import main

sys.exit(main())
