"""Command line: run one experiment config.

    python -m wsl.main --config=experiments/NAME.py[:variant] --workdir=DIR [--config.key=value ...]

The config names its method (`config.method = "classify"`); `main` calls
`wsl.methods.<method>.run(config, workdir)`. Errors a user can cause (unknown method,
config key or variant, missing data, a workdir of another run, a diverging run) print one
line `error: ...` and exit non-zero: 2 for a bad command line, 1 for the rest.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from wsl import configs

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiments/NAME.py[:variant] (smoke, cpu or paper: each config's VARIANTS)"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics, results")
FLAGS = flags.FLAGS


class ConfigError(Exception):
    """A bad command line or config (exit code 2)."""


def fail(message: str, code: int = 1):
    """Print `error: message` on one line to stderr and exit with `code`."""
    print("error: " + " ".join(line.strip() for line in str(message).splitlines()), file=sys.stderr)
    sys.exit(code)


def methods() -> list[str]:
    """The names of the modules in wsl.methods (each has `run(config, workdir)`)."""
    import wsl.methods

    return sorted(m.name for m in pkgutil.iter_modules(wsl.methods.__path__) if m.name[0] != "_")


def get_method(name: str):
    """`wsl.methods.<name>.run`; ConfigError listing the valid methods if there is none."""
    valid = methods()
    if name not in valid:
        raise ConfigError(f"unknown method {name!r} (config.method); choose one of {valid}")
    return importlib.import_module(f"wsl.methods.{name}").run


def config_keys(config, prefix: str = "") -> list[str]:
    """Dotted names of all leaves of a ConfigDict."""
    out = []
    for k, v in config.items():
        out += config_keys(v, f"{prefix}{k}.") if isinstance(v, ConfigDict) else [prefix + k]
    return out


def _has_key(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _config_arg(argv: list[str]) -> str | None:
    """The value of --config=... in argv (path[:variant])."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_key_message(argv: list[str]) -> str:
    keys = [m.group(1) for m in map(re.compile(r"--config\.([^=]+)").match, argv) if m]
    path, *variant = _config_arg(argv).split(":", 1)
    config = configs.load(path, *variant)
    bad = [k for k in keys if not _has_key(config, k)] or keys
    return f"unknown config key {bad[0]!r}; valid keys: {', '.join(config_keys(config))}"


def _flag_error_message(error: Exception) -> str:
    """The gist of an absl flags error: for a config file that raised, its last line."""
    text = str(error)
    if "Error whilst parsing config file" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        match = re.match(r"^\w+(Error|Exception): (.*)$", lines[-1])
        return f"in --config: {match.group(2) if match else lines[-1]}"
    return text


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors instead of tracebacks."""
    path = _config_arg(argv)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        fail(f"config file not found: {path.split(':', 1)[0]}", 2)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(_flag_error_message(e), 2)
    except (AttributeError, KeyError):  # config_flags on an override of a missing key
        fail(_unknown_key_message(argv), 2)


def main(argv: list[str]) -> None:
    from absl import logging

    from wsl.train import loop, parallel

    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}", 2)
    if _CONFIG.value is None or _WORKDIR.value is None:
        fail("both --config=experiments/NAME.py[:variant] and --workdir=DIR are required", 2)
    config = _CONFIG.value
    if not isinstance(config, ConfigDict):  # config_flags defers file errors to first use
        try:
            config.method  # noqa: B018
        except OSError as e:
            fail(f"cannot load --config: {e.__cause__ or e}", 2)
    try:
        if "method" not in config:
            raise ConfigError("the config has no 'method' (e.g. config.method = 'classify')")
        run = get_method(config.method)
        try:
            parallel.initialize(config.get("distributed", "auto"))
        except ValueError as e:
            raise ConfigError(f"config.distributed: {e}") from None
        run(config, _WORKDIR.value)
    except ConfigError as e:
        fail(e, 2)
    except (loop.UserError, FileNotFoundError) as e:
        fail(e, 1)


def cli() -> None:
    from wsl import allocator

    allocator.preload()  # restarts this process once with mimalloc (wsl/allocator.py)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
