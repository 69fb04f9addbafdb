"""The bytes reported for optimizer states agree with a hand calculation."""

import math

import jax
import jax.numpy as jnp
import optax

from tensor_galore_optax import optimizer_state_bytes, tensor_galore_adamw
from tensor_galore_optax._memory import tree_bytes


def test_tensor_galore_adamw_state_bytes_match_the_shapes():
  params = {
    "spectral": jax.ShapeDtypeStruct((64, 64, 64, 33), jnp.complex64),
    "dense": jax.ShapeDtypeStruct((256, 128), jnp.float32),
    "bias": jax.ShapeDtypeStruct((128,), jnp.float32),
  }
  # Hand calculation. rank 0.25: the fewest modes that keep a quarter of the entries, one here.
  spectral_core = (16, 64, 64, 33)  # the first mode, ceil(64 * 0.25)
  dense_core = (256, 32)  # the smaller side, ceil(128 * 0.25); the 256 side is not projected
  complex_bytes, real_bytes = 8, 4
  factors = 64 * 16 * complex_bytes + 128 * 32 * real_bytes
  # A complex core's second moment is stored real.
  first_moments = (
    math.prod(spectral_core) * complex_bytes + math.prod(dense_core) * real_bytes + 128 * real_bytes
  )
  second_moments = first_moments - math.prod(spectral_core) * (complex_bytes - real_bytes)
  moments = first_moments + second_moments
  counters = 2 * 4  # tensor_galore's count and Adam's count, int32
  # The residual's running mean squares: one vector per side of the projected matrix only.
  residual = (256 + 128) * real_bytes
  # The novelty of each factor column (the warm-up after a refresh), real.
  novelty = (16 + 32) * real_bytes
  expected = factors + moments + counters + residual + novelty

  measured = optimizer_state_bytes(tensor_galore_adamw(1e-3, rank=0.25), params)
  assert measured == expected

  adamw = optimizer_state_bytes(optax.adamw(1e-3), params)
  param_bytes = 64 * 64 * 64 * 33 * complex_bytes + 256 * 128 * real_bytes + 128 * real_bytes
  assert adamw == 2 * param_bytes + 4  # two moments and Adam's int32 count
  assert measured / adamw < 0.3


def test_tree_bytes_counts_arrays_and_shape_structs_alike():
  arrays = {"a": jnp.zeros((3, 5), jnp.bfloat16), "b": [jnp.zeros(7, jnp.complex64)]}
  structs = jax.eval_shape(lambda: arrays)
  assert tree_bytes(arrays) == tree_bytes(structs) == 3 * 5 * 2 + 7 * 8
