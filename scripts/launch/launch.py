"""Launch a wsl experiment on several hosts: a SLURM GPU cluster or a Cloud TPU VM pod slice.

    python scripts/launch/launch.py --target slurm --config experiments/X.py:paper \\
        --workdir /shared/runs/x --nodes 2 --gpus_per_node 8 [--dry-run] [-- --config.k=v ...]
    python scripts/launch/launch.py --target tpu --config experiments/X.py:paper \\
        --workdir /mnt/shared/runs/x --tpu my-v4-32 --zone us-central2-b [--dry-run]

Every process runs `python -m wsl.main ... --config.distributed=on`, which calls
`jax.distributed.initialize()`: JAX reads the cluster from SLURM's variables (one process
per GPU: coordinator on the first node, process id SLURM_PROCID, GPU SLURM_LOCALID) or from
the TPU VM metadata. The workdir must be on a filesystem every host sees (NFS, Lustre, a
gcsfuse mount): all processes write the same orbax checkpoints. `--dry-run` prints what
would be submitted or run; scripts/launch/*_example.* are such outputs.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import subprocess
import sys


def wsl_command(args) -> list[str]:
    return [
        args.python, "-m", "wsl.main", f"--config={args.config}", f"--workdir={args.workdir}",
        "--config.distributed=on", *args.overrides,
    ]  # fmt: skip


def slurm_script(args) -> str:
    """An sbatch script: `nodes` x `gpus_per_node` processes, one per GPU, via srun."""
    name = pathlib.Path(args.config.split(":")[0]).stem
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=wsl-{name}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={args.gpus_per_node}",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={args.workdir}/slurm-%j.out",
        *([f"#SBATCH --partition={args.partition}"] if args.partition else []),
        *([f"#SBATCH --account={args.account}"] if args.account else []),
        "# One process per GPU: every task sees all GPUs of its node and JAX picks",
        "# GPU SLURM_LOCALID; jax.distributed.initialize() finds the coordinator (first",
        "# node), process count and id in SLURM's variables. Submit from the repo root.",
        "set -euo pipefail",
        'cd "$SLURM_SUBMIT_DIR"',
        f"mkdir -p {shlex.quote(args.workdir)}",
        'export WSL_DATA_DIR="${WSL_DATA_DIR:-$HOME/.cache/wsl/data}"',
        "srun " + shlex.join(wsl_command(args)),
    ]
    return "\n".join(lines) + "\n"


def tpu_commands(args) -> list[list[str]]:
    """gcloud commands: set up every worker of the TPU VM, then run on all of them."""
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}",
           "--worker=all"]  # fmt: skip
    setup = (
        f"(test -d ~/wsl || git clone {shlex.quote(args.repo_url)} ~/wsl)"
        f" && cd ~/wsl && git fetch -q && git checkout -q {shlex.quote(args.ref)}"
        f' && {args.python} -m pip install -q -U "jax[tpu]" -e .'
    )
    run = "cd ~/wsl && WSL_DATA_DIR=${WSL_DATA_DIR:-$HOME/.cache/wsl/data} " + shlex.join(
        wsl_command(args)
    )
    return [[*ssh, "--command", setup], [*ssh, "--command", run]]


def tpu_script(args) -> str:
    lines = [
        "#!/bin/bash",
        "# Set up every worker of the TPU VM pod slice, then start wsl on all of them;",
        "# jax.distributed.initialize() reads the slice from the TPU VM metadata.",
        "set -euo pipefail",
        *(shlex.join(c) for c in tpu_commands(args)),
    ]
    return "\n".join(lines) + "\n"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, choices=("slurm", "tpu"))
    p.add_argument("--config", required=True, help="experiments/NAME.py[:variant]")
    p.add_argument("--workdir", required=True, help="on a filesystem all hosts share")
    p.add_argument(
        "--dry-run",
        "--dry_run",
        action="store_true",
        dest="dry_run",
        help="print the script / commands instead of submitting them",
    )
    p.add_argument("--python", default="python3")
    slurm = p.add_argument_group("slurm")
    slurm.add_argument("--nodes", type=int, default=2)
    slurm.add_argument("--gpus_per_node", type=int, default=8)
    slurm.add_argument("--cpus_per_task", type=int, default=8)
    slurm.add_argument("--time", default="24:00:00")
    slurm.add_argument("--partition", default="")
    slurm.add_argument("--account", default="")
    tpu = p.add_argument_group("tpu")
    tpu.add_argument("--tpu", default="wsl-v4-32", help="TPU VM name")
    tpu.add_argument("--zone", default="us-central2-b")
    tpu.add_argument("--repo_url", default="https://github.com/YOUR_ORG/wsl.git")
    tpu.add_argument("--ref", default="main", help="git branch, tag or commit to run")
    args, rest = p.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if bad := [a for a in rest if not a.startswith("--config.")]:
        p.error(f"unexpected arguments {bad}; pass config overrides as --config.key=value")
    args.overrides = rest
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.target == "slurm":
        script = slurm_script(args)
        path = pathlib.Path(args.workdir) / "launch.sbatch"
        if args.dry_run:
            print(script, end="")
            print(f"# submit with: sbatch {path}")
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        return subprocess.run(["sbatch", str(path)]).returncode
    if args.dry_run:
        print(tpu_script(args), end="")
        return 0
    for cmd in tpu_commands(args):
        if code := subprocess.run(cmd).returncode:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
