"""Shared pytest fixtures.

The default JAX dtype stays float32 (as users run it). Tests that compare against float64
references request the ``x64`` fixture, which enables 64-bit arrays for that test only.
"""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test body with ``jax_enable_x64`` on (float64 arrays by default)."""
    with jax.enable_x64(True):
        yield

try:  # property tests draw the same examples on every run: the default tier stays deterministic
    from hypothesis import settings

    settings.register_profile("emtdamp", derandomize=True, print_blob=True)
    settings.load_profile("emtdamp")
except ImportError:  # pragma: no cover
    pass
