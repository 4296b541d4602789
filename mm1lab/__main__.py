"""`python -m mm1lab` is the `mm1lab` command."""

import sys

from mm1lab.cli import main

sys.exit(main())
