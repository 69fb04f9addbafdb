"""A Fourier Neural Operator trained with AdamW, GaLore or Tensor-GaLore.

``python -m examples.fno`` trains one model (`main`, on the library `train`),
``python -m examples.fno.compare`` compares the optimizers and
``python -m examples.fno.data`` generates data sets.
"""
