"""Network <-> graph: structure, exact round trip, and permutation = node relabelling."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from wsl.nn import subjects
from wsl.weights import convert, fold, graph, spec, symmetry

NETS = {
    "siren": (subjects.SIREN(), (1, 2)),
    "zoo_cnn": (subjects.SmallCNN(kernel_size=5), (1, 28, 28, 1)),
    "resnet8": (subjects.ResNet(8, widths=(4, 8, 16)), (1, 8, 8, 3)),
}


def build(name):
    module, shape = NETS[name]
    x = jnp.zeros(shape)
    v = module.init(jax.random.key(0), x)
    s = spec.spec_from_flax(module, v, x)
    return s, convert.flax_to_canonical(s, v)


def test_siren_graph_size_matches_paper():
    s, w = build("siren")
    g = graph.to_graph(s, w, reverse=True)
    assert int(g.n_node[0]) == 2 + 32 + 32 + 1 == 67
    assert int(g.n_edge[0]) == 2 * (2 * 32 + 32 * 32 + 32) == 2240


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("reverse", [False, True])
def test_round_trip_exact(name, reverse):
    s, w = build(name)
    fs, fw = fold.fold_batchnorm(s, w)
    g = graph.to_graph(s, w, k_max=7, reverse=reverse)
    back = graph.from_graph(fs, g)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(fw), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernels_are_centred_and_residuals_are_identity():
    s, w = build("resnet8")
    g = graph.to_graph(s, w, k_max=5)
    st = graph.structure(fold.fold_batchnorm(s, w)[0], 5, False)
    res = np.asarray(g.edges["weight"])[st["type"] == graph.EDGE_RESIDUAL]
    assert res.shape[0] == 4 + 4 + 8  # channels carried by the 3 residual adds
    np.testing.assert_array_equal(res[:, 12], 1.0)
    assert np.count_nonzero(res) == res.shape[0]
    # a 3x3 kernel inside a 5x5 frame: the border is zero
    wt = np.asarray(g.edges["weight"])[st["type"] == graph.EDGE_WEIGHT].reshape(-1, 5, 5)
    assert np.all(wt[:, 0] == 0) and np.all(wt[:, :, 4] == 0)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("reverse", [False, True])
def test_permutation_is_a_node_relabelling(name, reverse):
    """A hidden-neuron permutation of the weights gives the same graph with its hidden
    nodes relabelled by that permutation: every edge (sender, receiver, type) of the
    permuted graph, its ends mapped back to the original nodes, carries exactly the
    features of that edge in the original graph, and every node keeps its bias."""
    s, w = build(name)
    t = symmetry.random_transform(s, jax.random.key(1))
    g1 = graph.to_graph(s, w, reverse=reverse)
    g2 = graph.to_graph(s, symmetry.apply_transform(s, w, t), reverse=reverse)
    fs = fold.fold_batchnorm(s, w)[0]
    st = graph.structure(fs, None, reverse)  # to_graph's
    old = np.arange(st["n_nodes"])  # node of g2 -> the node of g1 it came from
    for i, layer in enumerate(fs.layers):
        if layer.out_group >= 0 and t[layer.out_group] is not None:
            start = st["offsets"][i + 1]
            old[start : start + layer.out_features] = start + np.asarray(t[layer.out_group][0])
    assert not np.array_equal(old, np.arange(st["n_nodes"]))
    assert np.array_equal(
        old[st["role"] != graph.ROLE_HIDDEN], np.flatnonzero(st["role"] != graph.ROLE_HIDDEN)
    )

    def edges(g, relabel):
        snd, rcv = relabel[np.asarray(g.senders)], relabel[np.asarray(g.receivers)]
        feats = np.asarray(g.edges["weight"])
        return {(a, b, c): f for a, b, c, f in zip(snd, rcv, st["type"], feats, strict=True)}

    e1, e2 = edges(g1, np.arange(st["n_nodes"])), edges(g2, old)
    assert len(e1) == len(g1.senders) and e1.keys() == e2.keys()
    for k in e1:
        np.testing.assert_array_equal(e2[k], e1[k])
    np.testing.assert_array_equal(np.asarray(g2.nodes["bias"]), np.asarray(g1.nodes["bias"])[old])
    assert not np.array_equal(np.asarray(g1.edges["weight"]), np.asarray(g2.edges["weight"]))


def test_batch_and_pad_to_fixed_budget():
    graphs = [graph.to_graph(*build(n), k_max=5) for n in ("zoo_cnn", "resnet8")]
    b = jraph.batch(graphs)
    assert int(b.n_node.sum()) == sum(int(g.n_node[0]) for g in graphs)
    p = jraph.pad_with_graphs(b, n_node=2000, n_edge=20000, n_graph=3)
    assert p.nodes["bias"].shape == (2000, 1) and p.edges["weight"].shape == (20000, 25)


def test_unsupported_layers_are_refused():
    vit = subjects.ViT(depth=1, dim=16, heads=2, mlp_dim=32)
    x = jnp.zeros((1, 16, 16, 3))
    v = vit.init(jax.random.key(0), x)
    s = spec.spec_from_flax(vit, v, x)
    with pytest.raises(ValueError, match="dense/conv"):
        graph.structure(s)
