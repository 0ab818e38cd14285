import os
import pathlib
import shutil
import tempfile

import pytest

# One persistent XLA compilation cache per test session, shared with the subprocesses the
# CLI tests start (set before anything imports jax): compiling dominates their run time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="wsl-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

    def pytest_unconfigure(config):
        shutil.rmtree(_CACHE, ignore_errors=True)


# Offline data: WSL_DATA_DIR, else ../shared/data beside the repo (exported here, before any
# test module is imported, so the CLI subprocesses the tests start find it too), else wsl's
# default data dir. A missing file skips the tests that need it when nobody said where the
# data are, and fails them when WSL_DATA_DIR was set (CI sets it: a wrong path must not
# turn into silent skips).
DATA_DIR_GIVEN = bool(os.environ.get("WSL_DATA_DIR"))
_BESIDE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA_DIR_GIVEN and _BESIDE.is_dir():
    os.environ["WSL_DATA_DIR"] = str(_BESIDE)


def _need_offline(relpath: str) -> pathlib.Path:
    from wsl.data import images

    path = images.data_dir() / relpath
    if not path.exists():
        if DATA_DIR_GIVEN:
            pytest.fail(f"WSL_DATA_DIR is set but {path} does not exist", pytrace=False)
        pytest.skip(f"offline data not found ({path}); set WSL_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def offline():
    """offline(relpath) -> the path of that file or folder of the offline data (skip or fail
    when it is missing, see above)."""
    return _need_offline
