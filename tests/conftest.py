"""Shared pytest fixtures and the test session's compilation cache.

The default JAX dtype stays float32 (as users run it). Tests that compare against float64
references request the ``x64`` fixture, which enables 64-bit arrays for that test only.

Most of the default tier's time is XLA compilation, and many tests compile the same programs (every
CLI subprocess that trains a shipped config, the same method built by several tests). The session
therefore shares one JAX persistent compilation cache: a fresh temporary folder made by the
controlling process, passed to xdist workers and subprocesses through ``JAX_COMPILATION_CACHE_DIR``,
and deleted when the session ends, so every run starts cold, as CI does, and nothing outlives it.
A cache hit returns the executable XLA would have built from the same program and options (the key
is the HLO, the compile options and the JAX / XLA versions). ``JAX_COMPILATION_CACHE_DIR`` already
set in the environment is used as it is and kept.
"""

import os
import shutil
import tempfile

import jax
import pytest

_CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
    if not hasattr(config, "workerinput") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        config._emtdamp_jax_cache = tempfile.mkdtemp(prefix="emtdamp-test-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._emtdamp_jax_cache
        os.environ.update(_CACHE_ENV)
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # this process imported jax before the variables were set
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0)))
        jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                          int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)))


def pytest_unconfigure(config):
    folder = getattr(config, "_emtdamp_jax_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


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
