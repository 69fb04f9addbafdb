import sys

from examples.scaling.train import main

sys.exit(main())
