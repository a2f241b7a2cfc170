"""``python3 -m metasched.cli``: the same as the ``metasched`` command."""
import sys

from . import main

sys.exit(main())
