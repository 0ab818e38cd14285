cd /work/main
export WSL_DATA_DIR=/work/shared/data
.venv/bin/python scripts/fit_inrs.py --config=experiments/inr_mnist.py:cpu --out=inrs/mnist >> inrs/mnist/log.txt 2>&1
.venv/bin/python scripts/fit_inrs.py --config=experiments/inr_fashion_mnist.py:cpu --out=inrs/fashion_mnist >> inrs/fashion_mnist/log.txt 2>&1
.venv/bin/python scripts/make_zoo.py --config=experiments/zoo_mnist.py:cpu --out=zoos/mnist >> zoos/mnist/log.txt 2>&1
.venv/bin/python scripts/make_zoo.py --config=experiments/zoo_fashion_mnist.py:cpu --out=zoos/fashion_mnist >> zoos/fashion_mnist/log.txt 2>&1
.venv/bin/python scripts/make_zoo.py --config=experiments/zoo_hetero.py:cpu --out=zoos/hetero >> zoos/hetero/log.txt 2>&1
