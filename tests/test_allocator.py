"""wsl.allocator: entry points restart once with mimalloc preloaded (Linux)."""

import os
import subprocess
import sys

import pytest

from wsl import allocator

linux = pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD is Linux's")

# prints the allocator in force and the arguments, after preload()
PROBE = "import sys, wsl.allocator as a; a.preload(); print(a.active(), sys.argv[1:])"


def probe(env=None, *args):
    clean = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@linux
def test_mimalloc_is_installed_with_wsl():
    # a dependency of wsl on Linux (setup.py): losing it would silently slow every run
    path = allocator.library_path()
    assert path is not None and os.path.isfile(path)


@linux
def test_preload_restarts_once_with_mimalloc_and_the_same_arguments():
    out = probe(None, "--x=1", "two words")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "mimalloc ['--x=1', 'two words']"


def test_system_allocator_opts_out():
    out = probe({"WSL_ALLOCATOR": "system"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "system []"


def test_unknown_allocator_is_one_clear_error():
    out = probe({"WSL_ALLOCATOR": "tcmalloc"})
    assert out.returncode != 0
    assert "WSL_ALLOCATOR='tcmalloc'; choose 'mimalloc' or 'system'" in out.stderr
    assert out.stdout == ""
