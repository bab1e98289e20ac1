"""`python -m medplib_runtime.cli ...` is `medplib ...`."""

import sys

from .main import main

sys.exit(main())
