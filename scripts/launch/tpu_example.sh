#!/bin/bash
# Set up every worker of the TPU VM pod slice, then start wsl on all of them;
# jax.distributed.initialize() reads the slice from the TPU VM metadata.
set -euo pipefail
gcloud compute tpus tpu-vm ssh wsl-v4-32 --zone=us-central2-b --worker=all --command '(test -d ~/wsl || git clone https://github.com/YOUR_ORG/wsl.git ~/wsl) && cd ~/wsl && git fetch -q && git checkout -q main && python3 -m pip install -q -U "jax[tpu]" -e .'
gcloud compute tpus tpu-vm ssh wsl-v4-32 --zone=us-central2-b --worker=all --command 'cd ~/wsl && WSL_DATA_DIR=${WSL_DATA_DIR:-$HOME/.cache/wsl/data} python3 -m wsl.main --config=experiments/classify_mnist.py:paper --workdir=/mnt/shared/runs/classify_mnist --config.distributed=on'
