"""A memory allocator that keeps XLA's CPU steps from page-faulting (Linux).

XLA's CPU runtime allocates a step's large buffers afresh at every call. glibc serves
every allocation above 32 MB with its own mmap and unmaps it when freed, so each step
touches every page of those buffers anew: one page fault per 4 KiB. On this project's
2-core machine a 64 MB elementwise op took 31 ms under glibc and 4.9 ms under mimalloc, and
a gather of 286,720 rows x 32 floats 15-18 ms and 2.7 ms; NG-GNN trains on zoo CNNs at
34.0 graphs/s against 22.8 under glibc (results/bench_gnn.json, the `:system` rows).

mimalloc (the pip package cmeel-mimalloc, installed with wsl on Linux) keeps freed memory
for reuse. An allocator must be in place before the process starts (LD_PRELOAD), so the
command-line entry points `python -m wsl.main` (so every config and scripts/reproduce.py's
runs) and scripts/bench_gnn.py call `preload()` first: it re-executes the process once
with LD_PRELOAD set, and does nothing when mimalloc is missing, already loaded, not on
Linux, or when WSL_ALLOCATOR=system.
Library code imported into a process of your own is unaffected: there, start Python as

    LD_PRELOAD=$(python -c "import wsl.allocator as a; print(a.library_path())") python ...
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig

ENV = "WSL_ALLOCATOR"  # 'mimalloc' (default) or 'system'


def library_path() -> str | None:
    """The mimalloc shared library installed by cmeel-mimalloc, or None."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}
    for root in sorted(r for r in roots if r):
        hits = sorted(glob.glob(os.path.join(root, "cmeel.prefix", "lib", "libmimalloc.so.*")))
        if hits:
            return hits[0]
    return None


def active() -> str:
    """'mimalloc' if this process runs with mimalloc preloaded, else 'system'."""
    return "mimalloc" if "mimalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def system_env() -> dict:
    """This process's environment for a child that must run under the system allocator:
    mimalloc taken out of LD_PRELOAD, WSL_ALLOCATOR=system."""
    kept = [p for p in os.environ.get("LD_PRELOAD", "").split() if "mimalloc" not in p]
    return dict(os.environ, **{ENV: "system", "LD_PRELOAD": " ".join(kept)})


def preload() -> None:
    """Re-execute this process with mimalloc preloaded (see the module docstring). Call it
    first thing in a command-line entry point, before work starts: the process restarts."""
    choice = os.environ.get(ENV, "mimalloc")
    if choice not in ("mimalloc", "system"):
        raise SystemExit(f"error: {ENV}={choice!r}; choose 'mimalloc' or 'system'")
    if choice == "system" or sys.platform != "linux" or active() == "mimalloc":
        return
    lib = library_path()
    if lib is None:
        return
    # the re-executed process finds mimalloc in LD_PRELOAD (`active`) and goes on
    env = dict(os.environ, LD_PRELOAD=f"{lib} {os.environ.get('LD_PRELOAD', '')}".strip())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
