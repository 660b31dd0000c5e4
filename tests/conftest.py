"""Shared test setup.

Four host CPU devices are forced before JAX is imported so that multi-device code can be
tested on a CPU-only machine.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")
