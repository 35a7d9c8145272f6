"""``python -m textexplain.cli``."""
import sys

from . import main

sys.exit(main())
