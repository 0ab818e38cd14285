import os
import shutil
import tempfile

# One persistent XLA compilation cache per test session, shared with the subprocesses the
# CLI tests start (set before anything imports jax): compiling dominates their run time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="wsl-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

    def pytest_unconfigure(config):
        shutil.rmtree(_CACHE, ignore_errors=True)
