"""Set Transformer blocks, the SNE encoder on any architecture, logit invariance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.nn import set as st
from wsl.nn import subjects
from wsl.nn.sne import SNE, invariance_gap, logit_invariance_loss, sinusoidal
from wsl.weights import chunk as ch
from wsl.weights import spec

NETS = {
    "mlp": (subjects.MLP(hidden=(8,)), (1, 4, 4, 1)),
    "cnn": (subjects.SmallCNN(features=8), (1, 28, 28, 1)),
    "resnet8": (subjects.ResNet(8, widths=(4, 8, 16)), (1, 8, 8, 3)),
}
C = 16


@functools.cache
def build(name, seed=0):
    module, shape = NETS[name]
    x = jnp.zeros(shape)
    s = spec.spec_from_flax(module, jax.eval_shape(module.init, jax.random.key(0), x), x)
    rng = np.random.default_rng(seed)
    w = tuple(
        {r: 0.5 * rng.standard_normal(sh).astype(np.float32) for r, sh in layer.shapes}
        for layer in s.layers
    )
    return s, w


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


# ---- attention patterns and set blocks -------------------------------------------------


def test_attention_patterns_agree():
    n, h, d, segs, m = 23, 2, 4, 3, 2
    seg = jnp.array([0] * 5 + [1] * 9 + [-1] * 3 + [2] * 4 + [-1] * 2)

    @jax.jit
    def pairs(key):
        q, k, v = jax.random.normal(key, (3, n, h, d))
        full = st.masked_attention(q, k, v, seg, seg)
        # pool: one query per segment == masked attention with the query in that segment
        pooled = st.pool_attention(q[:segs, None], k, v, seg)[:, 0]
        pooled_ref = st.masked_attention(q[:segs], k, v, jnp.arange(segs), seg)
        # gather: each query attends its segment's m keys == masked attention over them
        gk, gv = k[: segs * m].reshape(segs, m, h, d), v[: segs * m].reshape(segs, m, h, d)
        kseg = jnp.repeat(jnp.arange(segs), m)
        gather_ref = st.masked_attention(q, gk.reshape(-1, h, d), gv.reshape(-1, h, d), seg, kseg)
        return {
            "full": (st.masked_attention(q, k, v, seg, seg, block=4), full),
            "window": (st.masked_attention(q, k, v, seg, seg, block=4, window=9), full),
            # blocks of 8 + 2 x 8 halo keys would read all 23: one unblocked pass instead
            "window_wide": (st.masked_attention(q, k, v, seg, seg, block=8, window=9), full),
            "pool": (pooled, pooled_ref),
            "gather": (st.gather_attention(q, gk, gv, seg, block=5), gather_ref),
        }

    out = pairs(jax.random.key(0))
    for a, b in out.values():
        close(a, b)
    assert np.all(np.asarray(out["full"][1])[np.asarray(seg) < 0] == 0)
    # a window smaller than a segment (9 elements) or a split segment: NaN, not wrong
    q = jnp.ones((n, h, d))
    assert np.all(np.isnan(st.masked_attention(q, q, q, seg, seg, block=4, window=8)))
    split = seg.at[20].set(0)
    assert not bool(st.segments_fit(split, 9)) and bool(st.segments_fit(seg, 9))


@pytest.mark.parametrize("block", ["sab", "isab", "pma"])
def test_set_blocks_equivariant_invariant_and_ignore_padding(block):
    x = jax.random.normal(jax.random.key(1), (2, 7, 5))
    mask = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)
    perm = jnp.array([3, 0, 4, 1, 2, 5, 6])
    mod = {"sab": st.SAB(8, 2), "isab": st.ISAB(8, 3, 2), "pma": st.PMA(8, 2, 2)}[block]
    p = jax.jit(mod.init)(jax.random.key(2), x, mask)

    @jax.jit
    def outputs(p):
        xe = jnp.concatenate([x, jnp.ones((2, 3, 5))], axis=1)
        me = jnp.concatenate([mask, jnp.zeros((2, 3), bool)], axis=1)
        return (
            mod.apply(p, x, mask),
            mod.apply(p, x[:, perm], mask[:, perm]),
            mod.apply(p, x.at[0, 5:].set(100.0), mask),  # padding values do not matter
            mod.apply(p, xe, me)[:, : 7 if block != "pma" else None],  # nor extra padding
        )

    y, yp, y2, ye = outputs(p)
    if block == "pma":  # set -> vector: invariant
        assert y.shape == (2, 1, 2, 8)
        close(yp, y)
    else:  # set -> set: equivariant, padded outputs are zero
        close(yp, y[:, perm])
        assert np.all(np.asarray(y[0, 5:]) == 0)
    close(y2, y)
    close(ye, y)


def test_sinusoidal():
    """[sin(p f_i), cos(p f_i), 0-pad] with f_i = 10000^(-i / half) (Vaswani et al.)."""
    pos = np.array([0, 1, 2, 7, 40])
    e = np.asarray(sinusoidal(jnp.asarray(pos), 7))
    ang = pos[:, None] * 10000.0 ** (-np.arange(3) / 3)
    expected = np.concatenate([np.sin(ang), np.cos(ang), np.zeros((5, 1))], axis=1)
    np.testing.assert_allclose(e, expected, rtol=1e-5, atol=1e-5)


# ---- the SNE encoder ---------------------------------------------------------------


@functools.cache
def batches(c=C, extra=0):
    specs = [build(n)[0] for n in NETS]
    budget, max_layers = ch.budget_for(specs, c)
    budget, max_layers = budget + extra, max_layers + extra
    return {
        n: ch.stack_chunks(
            [
                ch.chunk(*build(n), c, budget, max_layers),
                ch.chunk(*build(n, 1), c, budget, max_layers),
            ]
        )
        for n in NETS
    }


def test_sne_runs_on_unseen_architectures_and_ignores_padding():
    b = batches()
    window = ch.max_layer_chunks([build(n)[0] for n in NETS], C)  # exact, O(N * window)
    model = SNE(out_dim=3, dim=16, hidden=16, heads=2, block=32, window=window)
    params = jax.jit(model.init)(jax.random.key(0), b["mlp"])  # sees an MLP only
    apply = jax.jit(model.apply)
    outs = {n: apply(params, b[n]) for n in NETS}  # one compiled function for all
    for n, y in outs.items():
        assert y.shape == (2, 3) and np.all(np.isfinite(np.asarray(y))), n
    assert not np.allclose(np.asarray(outs["cnn"]), np.asarray(outs["resnet8"]))
    # a mixed batch with 5 more padding chunks and 5 more empty layer slots: same outputs
    padded = batches(extra=5)
    mixed = ch.stack_chunks([padded[n] for n in NETS])
    close(apply(params, mixed), jnp.concatenate([outs[n] for n in NETS]), atol=2e-5)
    # padding chunks and empty layer slots must not poison the gradients (exp(s - NEG) * 0)
    grads = jax.jit(jax.grad(lambda p: model.apply(p, mixed).sum()))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_static_segments_equal_masked_attention():
    """One architecture: SNE with its layers' static chunk runs (`segments`) computes what
    the masked path computes (outputs and gradients); other segment ids give NaN."""
    for name in ("cnn", "resnet8"):
        sp = build(name)[0]
        budget = ch.num_chunks(sp, C) + 3  # 3 padding chunks outside every segment
        b = ch.stack_chunks([ch.chunk(*build(name, i), C, budget) for i in (0, 1)])
        segments = tuple((start, k) for _, k, start in ch.layout(sp, C))
        window = ch.max_layer_chunks([sp], C)
        masked = SNE(out_dim=3, dim=16, hidden=16, heads=2, block=8, window=window)
        static = masked.clone(segments=segments)
        params = jax.jit(masked.init)(jax.random.key(0), b)
        close(jax.jit(static.apply)(params, b), jax.jit(masked.apply)(params, b), atol=2e-5)

        def grad(m, params=params, b=b):
            g = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(m.apply(p, b)))))(params)
            return jax.tree.leaves(g)

        for gs, gm in zip(grad(static), grad(masked), strict=True):
            close(gs, gm, atol=2e-5)
        wrong = masked.clone(segments=((0, segments[0][1] - 1), *segments[1:]))
        assert np.all(np.isnan(np.asarray(jax.jit(wrong.apply)(params, b))))
        with pytest.raises(ValueError, match="must be disjoint"):
            masked.clone(segments=((0, segments[0][1] + 1), *segments[1:])).apply(params, b)


# ---- logit invariance --------------------------------------------------------------


def test_logit_invariance_zero_for_invariant_function_positive_for_sne():
    s, w = build("mlp")
    batch = jax.tree.map(lambda *a: np.stack(a), w, build("mlp", 1)[1])
    # the multiset of weights is permutation invariant
    f = lambda _, d: jnp.sum(d["values"] ** 2 + d["values"], axis=(-1, -2))[:, None]
    inv = jax.jit(
        lambda k: (
            logit_invariance_loss(f, None, s, batch, k, C),
            invariance_gap(f, None, s, w, k, C),  # a single network works too
        )
    )
    assert all(float(v) < 1e-3 for v in inv(jax.random.key(0)))
    model = SNE(out_dim=2, dim=16, hidden=16, heads=2, block=32)
    params = jax.jit(model.init)(jax.random.key(0), ch.chunk_batch(s, batch, C))

    @jax.jit
    def loss(params, key):
        return logit_invariance_loss(model.apply, params, s, batch, key, C, weight=2.0)

    value, grad = jax.value_and_grad(loss)(params, jax.random.key(1))
    assert float(value) > 0
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grad))
