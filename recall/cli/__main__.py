"""``python -m recall.cli``: the ``recall`` command."""

import sys

from recall.cli import main

sys.exit(main())
