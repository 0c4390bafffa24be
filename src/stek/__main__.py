"""python -m stek"""

import sys

from .cli import main

sys.exit(main())
