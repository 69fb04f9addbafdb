"""``python -m examples.fno``: trains a Fourier Neural Operator (see `examples.fno.main`)."""

import sys

from examples.fno import main

sys.exit(main.main())
