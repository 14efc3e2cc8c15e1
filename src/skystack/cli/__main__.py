"""``python -m skystack.cli``: the same as the ``skystack`` command."""
import sys

from .main import main

sys.exit(main())
