"""Pad and chunk (SNE): exact inverse, masks, layout, batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.nn import subjects
from wsl.weights import chunk as ch
from wsl.weights import spec, symmetry

NETS = {
    "mlp": (subjects.MLP(hidden=(8,)), (1, 4, 4, 1)),
    "cnn": (subjects.SmallCNN(), (1, 28, 28, 1)),
    "resnet8": (subjects.ResNet(8, widths=(4, 8, 16)), (1, 8, 8, 3)),
    "resnet20": (subjects.ResNet(20), (1, 8, 8, 3)),
    "vit": (subjects.ViT(patch=4, dim=16, depth=1, heads=2, mlp_dim=32), (1, 8, 8, 3)),
}


@functools.cache
def build(name):
    """Spec from abstract variables (no init compile) and random weights of its shapes
    (distinct values in every role, BatchNorm statistics included)."""
    module, shape = NETS[name]
    x = jnp.zeros(shape)
    s = spec.spec_from_flax(module, jax.eval_shape(module.init, jax.random.key(0), x), x)
    rng = np.random.default_rng(0)
    w = tuple(
        {r: rng.standard_normal(sh).astype(np.float32) for r, sh in layer.shapes}
        for layer in s.layers
    )
    return s, w


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name, c", [(n, 7) for n in NETS] + [("mlp", 64), ("cnn", 64)])
def test_round_trip_and_masks(name, c):
    s, w = build(name)
    d = ch.chunk(s, w, c, budget=ch.num_chunks(s, c) + 3, max_layers=len(s.layers) + 2)
    assert d["values"].shape == (ch.num_chunks(s, c) + 3, c)
    assert int(d["mask"].sum()) == s.num_params
    np.testing.assert_array_equal(d["chunk_mask"], d["mask"].any(-1))
    assert np.all(np.asarray(d["values"])[~np.asarray(d["mask"])] == 0)
    assert np.all(np.asarray(d["layer_id"])[~np.asarray(d["chunk_mask"])] == -1)
    assert int(d["layer_mask"].sum()) == len(s.layers)
    assert_same(ch.unchunk(s, d, c), w)


def test_layout_rows_per_output_neuron():
    s, w = build("cnn")
    c = 16
    d = ch.chunk(s, w, c)
    flat = np.asarray(d["values"]).reshape(-1)
    k, b = np.asarray(w[1]["kernel"]), np.asarray(w[1]["bias"])  # (3, 3, 16, 16)
    start = ch.layout(s, c)[1][2] * c
    row = 16 * 9 + 1
    o = 5  # output channel 5: input-channel major, (kh, kw) innermost, then the bias
    expect = np.concatenate([k[:, :, :, o].transpose(2, 0, 1).reshape(-1), [b[o]]])
    np.testing.assert_array_equal(flat[start + o * row : start + (o + 1) * row], expect)
    # every layer starts on a fresh chunk; metadata follows the layers
    lay = ch.layout(s, c)
    for i, (_, k_i, first) in enumerate(lay):
        assert np.all(np.asarray(d["layer_id"])[first : first + k_i] == i)
        np.testing.assert_array_equal(
            np.asarray(d["chunk_pos"])[first : first + k_i], np.arange(k_i)
        )
    assert np.asarray(d["layer_type"])[0] == ch.LAYER_TYPES["conv"]
    assert np.asarray(d["layer_type"])[-1] == ch.LAYER_TYPES["dense"]


def test_permutation_moves_whole_rows():
    s, w = build("resnet8")
    g = s.layers[2].out_group  # permute only this group (conv2's outputs, bn2)
    t = symmetry.random_transform(s, jax.random.key(3))
    t = tuple(x if i == g else None for i, x in enumerate(t))
    wp = symmetry.apply_transform(s, w, t)
    perm = np.asarray(t[g][0])
    assert not np.all(perm == np.arange(perm.size))
    for i in (2, 3):  # a conv and the BatchNorm after it: rows follow the neuron
        a = ch.layer_matrix(s.layers[i], wp[i])
        b = ch.layer_matrix(s.layers[i], w[i])
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[perm])


def test_jit_vmap_batch_and_mixed_stack():
    s, w = build("mlp")
    c = 8
    batch = jax.tree.map(lambda a: jnp.stack([a, 2 * a, -a]), w)
    d = jax.jit(lambda w: ch.chunk_batch(s, w, c, 40, 4))(batch)
    assert d["values"].shape == (3, 40, 8) and d["layer_id"].shape == (3, 40)
    assert_same(ch.unchunk(s, d, c), batch)
    s2, w2 = build("cnn")
    budget, max_layers = ch.budget_for([s, s2], c)
    mixed = ch.stack_chunks(
        [ch.chunk(s, w, c, budget, max_layers), ch.chunk(s2, w2, c, budget, max_layers)]
    )
    assert mixed["values"].shape == (2, budget, c) and mixed["layer_mask"].shape == (2, max_layers)
    assert_same(ch.unchunk(s2, mixed["values"][1], c), w2)


def test_errors_name_the_problem():
    s, w = build("mlp")
    with pytest.raises(ValueError, match="budget 2 is too small"):
        ch.chunk(s, w, 8, budget=2)
    with pytest.raises(ValueError, match="max_layers"):
        ch.chunk(s, w, 8, max_layers=1)
    with pytest.raises(ValueError, match="differ"):
        ch.stack_chunks([ch.chunk(s, w, 8), ch.chunk(s, w, 8, budget=50)])
