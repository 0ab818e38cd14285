"""wsl: weight-space learning in JAX/Flax."""

from setuptools import find_packages, setup

# Versions pinned to what was tested on CPU (2 cores, Python 3.11.7).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "jraph==0.0.6.dev0",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "pillow==13.0.0",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "scikit-learn==1.9.1",
    # XLA on CPU page-faults every step under glibc's allocator (wsl/allocator.py)
    "cmeel-mimalloc==3.4.3; sys_platform == 'linux'",
]

setup(
    name="wsl",
    version="0.1.0",
    description="Weight-space learning: neural networks' weights treated as data (JAX/Flax).",
    packages=find_packages(include=["wsl", "wsl.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": ["pytest==9.2.0", "ruff==0.17.6"]},
)
