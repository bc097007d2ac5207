"""``python -m agentstream``: the same as the ``agentstream`` command."""

import sys

from agentstream.cli import main

sys.exit(main())
