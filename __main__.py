"""`python -m pulsarfunc`: the same as the `pulsarfunc` command."""

import sys

from pulsarfunc.cli import main

sys.exit(main())
