"""A Fourier Neural Operator trained with Tensor-GaLore.

``python -m examples.fno`` trains one (`train`, the FNO of `model`);
``python -m examples.fno.data`` generates Navier-Stokes and Darcy data sets
(`navier_stokes`, `darcy`).
"""
