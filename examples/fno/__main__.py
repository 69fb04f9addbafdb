"""``python -m examples.fno``: trains a Fourier Neural Operator (see `examples.fno.train`)."""

from examples.fno import train

train.main()
