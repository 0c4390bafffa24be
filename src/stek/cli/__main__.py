"""python -m stek.cli"""

import sys

from . import main

sys.exit(main())
