#!/usr/bin/env bash
# Generate every zoo and INR set the weight-space tables train on (README: Model zoos and
# INR sets), one after another; each step is resumable, so rerun this after a kill.
#   nohup bash scripts/make_all_zoos.sh > zoos/run_all.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
export WSL_DATA_DIR="${WSL_DATA_DIR:-$(cd .. && pwd)/shared/data}"
mkdir -p zoos/mnist zoos/fashion_mnist zoos/hetero inrs/mnist inrs/fashion_mnist \
  inrs/mnist_dws inrs/fashion_mnist_dws
step() {  # step NAME SCRIPT CONFIG OUT
  if [ -f "$4/weights.npy" ] && [ -f "$4/config.json" ]; then echo "$1: done"; return; fi
  echo "$1: start $(date -u +%FT%TZ)"
  .venv/bin/python "scripts/$2" --config="$3" --out="$4" >> "$4/log.txt" 2>&1
  echo "$1: exit $? $(date -u +%FT%TZ)"
}
step inr_mnist fit_inrs.py experiments/inr_mnist.py:cpu inrs/mnist
step zoo_mnist make_zoo.py experiments/zoo_mnist.py:cpu zoos/mnist
step inr_fashion_mnist fit_inrs.py experiments/inr_fashion_mnist.py:cpu inrs/fashion_mnist
step zoo_fashion_mnist make_zoo.py experiments/zoo_fashion_mnist.py:cpu zoos/fashion_mnist
step zoo_hetero make_zoo.py experiments/zoo_hetero.py:cpu zoos/hetero
step inr_mnist_dws fit_inrs.py experiments/inr_mnist_dws.py:cpu inrs/mnist_dws
step inr_fashion_mnist_dws fit_inrs.py experiments/inr_fashion_mnist_dws.py:cpu inrs/fashion_mnist_dws
