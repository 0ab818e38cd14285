"""wsl: weight-space learning in JAX/Flax."""

__version__ = "0.1.0"
