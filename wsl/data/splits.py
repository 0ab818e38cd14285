"""Deterministic train / val / test splits of weight-space data sets.

- :func:`random_split`: split `n` items by fractions or counts with a seed (a
  `jax.random` permutation: the same seed gives the same split on every machine).
- :func:`split_by_model`: the same, but all rows (checkpoints) of one model land in the
  same split (zoos store several epochs per model; splitting rows would leak).
- :func:`nfn_split`: the NFN / neural-graphs convention for the Small CNN Zoo
  (`nfn/experiments/data_utils.py` `ZooDataset`, `neural-graphs` `NFNZooDataset`):
  permute the rows of `weights.npy` by a fixed index file (`<dataset>_split.csv`, see
  `wsl.data.published.SOURCES['nfn_split/...']`), keep the rows whose `step` is the final
  epoch (86), then test = the second half (rows int(0.5 n) ..), and the first half is
  shuffled with Python's `random.Random(0)` and cut 80 / 20 into train / val.
"""

from __future__ import annotations

import pathlib
import random
from collections.abc import Mapping, Sequence

import jax
import numpy as np

SPLITS = ("train", "val", "test")


def _counts(n: int, sizes: Sequence[float | int]) -> list[int]:
    if all(isinstance(s, int | np.integer) for s in sizes):
        counts = [int(s) for s in sizes]
    else:
        if abs(sum(sizes) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1, got {list(sizes)}")
        counts = [int(round(f * n)) for f in sizes[:-1]]
        counts.append(n - sum(counts))
    if sum(counts) != n or min(counts) < 0:
        raise ValueError(f"split sizes {list(sizes)} do not partition {n} items")
    return counts


def random_split(
    n: int,
    sizes: Sequence[float | int] = (0.8, 0.1, 0.1),
    seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> dict[str, np.ndarray]:
    """Indices 0..n-1 split into `names` by `sizes` (fractions adding to 1, or counts
    adding to n), after a permutation drawn from `jax.random.key(seed)`. Each split's
    indices are sorted."""
    counts = _counts(n, sizes)
    perm = np.asarray(jax.random.permutation(jax.random.key(seed), n))
    out, pos = {}, 0
    for name, c in zip(names, counts, strict=True):
        out[name] = np.sort(perm[pos : pos + c])
        pos += c
    return out


def split_by_model(
    model_ids: Sequence,
    sizes: Sequence[float | int] = (0.8, 0.1, 0.1),
    seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> dict[str, np.ndarray]:
    """Row indices split so that all rows sharing a model id (e.g. `modeldir`) land in
    one split; `sizes` count models, not rows."""
    ids = np.asarray(model_ids)
    uniq, inverse = np.unique(ids, return_inverse=True)
    per_model = random_split(len(uniq), sizes, seed, names)
    rows = np.arange(len(ids))
    return {k: rows[np.isin(inverse, v)] for k, v in per_model.items()}


def read_index_file(path) -> np.ndarray:
    """A one-column CSV of integers without header (NFN's `<dataset>_split.csv`)."""
    text = pathlib.Path(path).read_text().split()
    return np.asarray([int(t) for t in text], np.int64)


def nfn_split(
    steps: np.ndarray, order: np.ndarray | None = None, final_step: int = 86
) -> dict[str, np.ndarray]:
    """The NFN / neural-graphs Small CNN Zoo split. `steps` is the metrics `step` column
    of all rows of `weights.npy`; `order` the fixed row permutation (NFN's split CSV;
    None = identity, for zoos that have none). Returns, per split, indices into the
    original rows of `weights.npy` (in the order the reference loaders present them)."""
    steps = np.asarray(steps)
    order = np.arange(len(steps)) if order is None else np.asarray(order)
    if len(order) != len(steps) or not np.array_equal(np.sort(order), np.arange(len(steps))):
        raise ValueError(f"the index file is not a permutation of the {len(steps)} rows")
    kept = order[steps[order] == final_step]
    n = len(kept)
    test_point = int(0.5 * n)
    trainval = list(range(test_point))
    val_point = int(0.8 * len(trainval))
    random.Random(0).shuffle(trainval)
    return {
        "train": kept[np.asarray(trainval[:val_point], np.int64)],
        "val": kept[np.asarray(trainval[val_point:], np.int64)],
        "test": kept[test_point:],
    }


def small_cnn_zoo_split(
    metrics: Mapping[str, np.ndarray],
    convention: str = "nfn",
    index_file=None,
    final_step: int | None = None,
    sizes: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split a Small CNN Zoo's rows (`metrics` from `load_small_cnn_zoo`, all rows).
    'nfn': :func:`nfn_split` (final step = `final_step`, default the largest step);
    'model': :func:`split_by_model` over `modeldir` with `sizes` and `seed`."""
    steps = np.asarray(metrics["step"]).astype(np.int64)
    if convention == "nfn":
        order = read_index_file(index_file) if index_file is not None else None
        return nfn_split(steps, order, int(steps.max()) if final_step is None else final_step)
    if convention == "model":
        return split_by_model(metrics["modeldir"], sizes, seed)
    raise ValueError(f"unknown split convention {convention!r}; choose 'nfn' or 'model'")
