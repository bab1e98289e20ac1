"""`python -m medplib_runtime.cli ...` is `medplib ...`."""

import sys

from .commands import main

sys.exit(main())
