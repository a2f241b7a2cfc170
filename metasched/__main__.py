"""``python3 -m metasched``: the same as ``metasched-api``."""
import sys

from .runner import main

sys.exit(main())
