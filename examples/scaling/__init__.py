"""FSDP training of the FNO over several processes: ``python -m examples.scaling --help``.

See ``docs/scaling.md`` ("Several hosts") and `examples.scaling.train`.
"""
