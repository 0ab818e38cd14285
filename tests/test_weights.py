"""Weights as data: spec derivation, converters, symmetries and BatchNorm folding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.nn import subjects
from wsl.weights import convert, fold, spec, symmetry


class FlattenCNN(nn.Module):
    """conv -> relu -> flatten -> dense -> tanh -> dense: exercises `in_spatial`."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="VALID", name="conv")(x))
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(nn.Dense(12, name="hidden")(x))
        return nn.Dense(3, name="out")(x)


# name -> (module, input shape)
NETS = {
    "mlp": (subjects.MLP(hidden=(32, 16)), (4, 8, 8, 1)),
    "zoo_cnn": (subjects.SmallCNN(), (4, 28, 28, 1)),
    "zoo_cnn_tanh": (subjects.SmallCNN(act="tanh"), (4, 28, 28, 1)),
    "siren": (subjects.SIREN(), (16, 2)),
    "flatten_cnn": (FlattenCNN(), (4, 9, 9, 2)),
    "resnet20": (subjects.ResNet(20), (2, 32, 32, 3)),
    "resnet56": (subjects.ResNet(56), (2, 32, 32, 3)),
}


def _randomise_bn(variables, key):
    """Give BatchNorm statistics non-trivial values so that folding is really tested: means
    ~ N(0, 0.2^2), variances in [0.5, 1.5] (positive means of ~1 would leave every ReLU of
    a ResNet off and its outputs constant: `test_test_networks_are_alive`)."""
    if "batch_stats" not in variables:
        return variables
    paths, tree = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
    keys = jax.random.split(key, len(paths))
    new = [
        0.2 * jax.random.normal(k, x.shape)
        if path[-1].key == "mean"
        else jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5)
        for k, (path, x) in zip(keys, paths, strict=True)
    ]
    stats = jax.tree.unflatten(tree, new)
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            x + 0.1 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
            if str(p[-1].key) in ("scale", "bias")
            else x
        ),
        variables["params"],
    )
    return {"params": bumped, "batch_stats": stats}


_CACHE: dict = {}


def build(name):
    """(module, variables, spec, x) for a test network, built once per session."""
    if name not in _CACHE:
        module, shape = NETS[name]
        x = jax.random.normal(jax.random.key(1), shape)
        variables = module.init(jax.random.key(0), x)
        variables = _randomise_bn(dict(variables), jax.random.key(2))
        _CACHE[name] = (module, variables, spec.spec_from_flax(module, variables, x), x)
    return _CACHE[name]


def forward(module, variables, x):
    return np.asarray(module.apply(variables, x))


def max_tree_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_test_networks_are_alive():
    """Every test network's outputs differ between its inputs, so the tests that compare
    outputs (folding, permutations, round trips) compare something."""
    for name in NETS:
        module, variables, _, x = build(name)
        assert forward(module, variables, x).std(0).max() > 1e-2, name


# ---- spec -----------------------------------------------------------------------


def test_spec_is_hashable_and_static():
    _, variables, s, _ = build("resnet20")
    total = sum(x.size for x in jax.tree.leaves(variables))  # params + BatchNorm statistics
    assert hash(s) == hash(spec.spec_from_flax(*build("resnet20")[:2], build("resnet20")[3]))
    f = jax.jit(lambda w, sp: sp.num_params + 0 * w, static_argnums=1)
    assert int(f(jnp.zeros(()), s)) == total == 269722 + 2 * 688


def test_spec_structure_small_cnn_and_resnet():
    _, _, s, _ = build("zoo_cnn")
    assert s.num_params == 4970
    assert [layer.kind for layer in s.layers] == ["conv", "conv", "conv", "dense"]
    assert [g.permutable for g in s.groups] == [False, True, True, True, False]
    assert all(g.scaling == "positive" for g in s.groups[1:4])
    assert build("zoo_cnn_tanh")[2].groups[1].scaling == "sign"
    _, _, r, _ = build("resnet20")
    kinds = [layer.kind for layer in r.layers]
    assert kinds.count("conv") == 19 and kinds.count("norm") == 19 and kinds[-1] == "dense"
    assert len(r.residuals) == 9  # one per block
    assert {e.offset for e in r.embeds} == {8, 16}  # option-A pads planes // 4 per side
    # the residual stream of each stage is one group: conv2 of every block writes into it
    stage1 = {
        layer.out_group
        for layer in r.layers
        if layer.name.endswith("conv2") and layer.name.startswith("layer1")
    }
    assert len(stage1) == 1
    _, _, f, _ = build("flatten_cnn")
    assert f.layers[1].in_spatial == 16 and f.layers[1].in_features == 96


def test_unknown_ops_freeze_groups():
    """A ViT's attention is not understood by the tracer: the residual stream must not be
    reported as permutable, while the MLP hidden layers inside each block are."""
    vit = subjects.ViT(depth=1, dim=16, heads=2, mlp_dim=32)
    x = jnp.zeros((1, 16, 16, 3))
    s = spec.spec_from_flax(vit, vit.init(jax.random.key(0), x), x)
    mlp1 = next(layer for layer in s.layers if layer.name.endswith("mlp1"))
    assert not s.groups[mlp1.in_group].permutable
    assert s.groups[mlp1.out_group].permutable


# ---- round trips -------------------------------------------------------------------

ROUND_TRIP = ["mlp", "zoo_cnn", "flatten_cnn", "resnet20", "resnet56"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_flax_round_trip(name):
    module, variables, s, x = build(name)
    w = convert.flax_to_canonical(s, variables)
    back = convert.canonical_to_flax(s, w)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    assert max_tree_diff(back, variables) == 0.0
    np.testing.assert_array_equal(forward(module, back, x), forward(module, variables, x))
    vec = convert.flatten(s, w)
    assert vec.shape == (s.num_params,)
    assert max_tree_diff(convert.unflatten(s, vec), w) == 0.0


def _torch_state_dict(s, weights):
    """Independent closed form of torch's layout: dense (out, in), conv (out, in, kh, kw),
    Linear after flatten reads (C, H, W)."""
    sd = {}
    for layer, arr in zip(s.layers, weights, strict=True):
        name = layer.name.replace("/", ".")
        if layer.kind == "conv":
            sd[f"{name}.weight"] = np.asarray(arr["kernel"]).transpose(3, 2, 0, 1)
        elif layer.kind == "dense":
            k = np.asarray(arr["kernel"])
            if layer.in_spatial > 1:
                c = layer.in_features // layer.in_spatial
                k = k.reshape(layer.in_spatial, c, -1).transpose(1, 0, 2).reshape(-1, k.shape[1])
            sd[f"{name}.weight"] = k.T
        else:
            sd[f"{name}.weight"] = np.asarray(arr["scale"])
        if "bias" in arr:
            sd[f"{name}.bias"] = np.asarray(arr["bias"])
        if layer.kind == "norm":
            sd[f"{name}.running_mean"] = np.asarray(arr["mean"])
            sd[f"{name}.running_var"] = np.asarray(arr["var"])
            sd[f"{name}.num_batches_tracked"] = np.array(7)
    return sd


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_torch_round_trip(name):
    module, variables, s, x = build(name)
    w = convert.flax_to_canonical(s, variables)
    sd = _torch_state_dict(s, w)
    w2 = convert.torch_to_canonical(sd, s)
    assert max_tree_diff(w2, w) == 0.0
    names = spec.spec_from_state_dict(sd)
    sd2 = convert.canonical_to_torch(w2, names, s)
    assert set(sd2) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for k, v in sd2.items():
        np.testing.assert_array_equal(v, sd[k])
    out = forward(module, convert.canonical_to_flax(s, w2), x)
    assert np.max(np.abs(out - forward(module, variables, x))) < 1e-6


def _keras_layout(s):
    """layout.csv text as the published Small CNN Zoo writes it (independent of
    convert.write_layout): Keras variable names, HWIO kernels, pandas index column."""
    rows, pos = ["varname,start_idx,end_idx,shape"], 0
    names = ["sequential/conv2d", "sequential/conv2d_1", "sequential/conv2d_2", "sequential/dense"]
    for layer, base in zip(s.layers, names, strict=True):
        for role, shape in layer.shapes:
            n = int(np.prod(shape))
            rows.append(f'{base}/{role}:0,{pos},{pos + n},"{tuple(shape)}"')
            pos += n
    return "\n".join(rows) + "\n"


def test_small_cnn_zoo_row_round_trip():
    module, variables, s, x = build("zoo_cnn")
    w = convert.flax_to_canonical(s, variables)
    # a zoo row is the TF variables flattened in order, kernels HWIO / (in, out)
    row = np.concatenate([np.asarray(a[r]).ravel() for a in w for r in ("kernel", "bias")])
    flat = spec.spec_from_layout(convert.read_layout(_keras_layout(s)))
    assert flat.source == "flat" and flat.num_params == 4970
    w_flat = convert.unflatten(flat, row)
    w2 = convert.transfer(w_flat, flat, s)
    assert max_tree_diff(w2, w) == 0.0
    np.testing.assert_array_equal(convert.flatten(flat, w_flat), row)
    out = forward(module, convert.canonical_to_flax(s, w2), x)
    assert np.max(np.abs(out - forward(module, variables, x))) < 1e-6
    # our own layout writer reads back to the same spec layers
    again = spec.spec_from_layout(convert.read_layout(convert.write_layout(flat)))
    assert again == flat


# ---- symmetries ---------------------------------------------------------------------

SYMMETRY = ["mlp", "zoo_cnn", "zoo_cnn_tanh", "siren", "flatten_cnn", "resnet20", "resnet56"]


@pytest.mark.parametrize("name", SYMMETRY)
@pytest.mark.parametrize("kind", ["permute", "rescale", "sign_flip", "all"])
def test_symmetry_preserves_function(name, kind):
    module, variables, s, x = build(name)
    w = convert.flax_to_canonical(s, variables)
    key = jax.random.key(42)
    fn = {
        "permute": symmetry.permute,
        "rescale": symmetry.rescale,
        "sign_flip": symmetry.sign_flip,
        "all": symmetry.random_symmetry,
    }[kind]
    w2 = fn(s, w, key)
    changed = max_tree_diff(w2, w)
    allowed = {g.scaling for g in s.groups if g.permutable}
    applies = {
        "permute": True,
        "all": True,
        "rescale": bool(allowed & {"positive", "any"}),
        "sign_flip": bool(allowed & {"sign", "any"}),
    }[kind]
    if applies:
        assert changed > 1e-3, "the transformation did not change the weights"
    else:
        assert changed == 0.0
    ref = forward(module, variables, x)
    out = forward(module, convert.canonical_to_flax(s, w2), x)
    scale = max(1.0, float(np.max(np.abs(ref))))
    assert np.max(np.abs(out - ref)) < 1e-5 * scale


def test_expected_symmetries_apply():
    """Rescaling applies to the ReLU nets, sign flips to the tanh/sine nets."""
    for name in ["mlp", "zoo_cnn", "resnet20"]:
        assert {g.scaling for g in build(name)[2].groups if g.permutable} == {"positive"}
    for name in ["zoo_cnn_tanh", "siren"]:
        assert {g.scaling for g in build(name)[2].groups if g.permutable} == {"sign"}


def test_symmetry_is_jittable_and_deterministic():
    _, variables, s, _ = build("resnet20")
    w = convert.flax_to_canonical(s, variables)
    f = jax.jit(symmetry.random_symmetry, static_argnums=0)
    a, b = f(s, w, jax.random.key(3)), f(s, w, jax.random.key(3))
    assert max_tree_diff(a, b) == 0.0
    assert max_tree_diff(a, f(s, w, jax.random.key(4))) > 0


def test_pad_channels_follow_their_source():
    """Option-A shortcut: channel i of a stage lands at offset + i of the next one."""
    _, _, s, _ = build("resnet20")
    t = symmetry.random_transform(s, jax.random.key(0), scale="positive")
    for e in s.embeds:
        src_perm, src_d = t[e.src]
        dst_perm, dst_d = t[e.dst]
        m = s.groups[e.src].size
        np.testing.assert_array_equal(dst_perm[e.offset : e.offset + m], e.offset + src_perm)
        np.testing.assert_array_equal(dst_d[e.offset : e.offset + m], src_d)
        assert sorted(np.asarray(dst_perm).tolist()) == list(range(s.groups[e.dst].size))


# ---- folding --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [20, 56])
def test_fold_batchnorm(depth):
    module, variables, s, x = build(f"resnet{depth}")
    w = convert.flax_to_canonical(s, variables)
    fs, fw = fold.fold_batchnorm(s, w)
    plain = subjects.ResNet(depth, norm=False)
    ps = spec.spec_from_flax(plain, plain.init(jax.random.key(0), x), x)
    spec.compatible(ps, fs)
    assert [layer.kind for layer in fs.layers] == [layer.kind for layer in ps.layers]
    assert len(fs.residuals) == len(ps.residuals)
    out = forward(plain, convert.canonical_to_flax(ps, convert.transfer(fw, fs, ps)), x)
    ref = forward(module, variables, x)
    assert np.max(np.abs(out - ref)) < 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    # the folded spec keeps its symmetry information: permuting still preserves function
    w3 = symmetry.random_symmetry(fs, fw, jax.random.key(5))
    out3 = forward(plain, convert.canonical_to_flax(ps, convert.transfer(w3, fs, ps)), x)
    assert np.max(np.abs(out3 - ref)) < 1e-4 * max(1.0, float(np.max(np.abs(ref))))


# ---- bad input --------------------------------------------------------------------------


def test_shape_mismatch_names_layer_and_shapes():
    _, variables, s, _ = build("zoo_cnn")
    w = list(convert.flax_to_canonical(s, variables))
    w[1] = dict(w[1], kernel=np.zeros((3, 3, 16, 8)))
    with pytest.raises(convert.WeightShapeError) as e:
        convert.canonical_to_flax(s, tuple(w))
    msg = str(e.value)
    assert "conv1" in msg and "(3, 3, 16, 8)" in msg and "(3, 3, 16, 16)" in msg
    with pytest.raises(convert.WeightShapeError, match="spec expects"):
        convert.unflatten(s, np.zeros(10))


def test_state_dict_of_another_architecture_is_refused():
    _, variables, s, _ = build("resnet20")
    _, v56, s56, _ = build("resnet56")
    sd = _torch_state_dict(s56, convert.flax_to_canonical(s56, v56))
    with pytest.raises(ValueError, match="layer count|does not match"):
        convert.torch_to_canonical(sd, s)


def test_torch_spec_has_no_symmetry_and_says_so():
    _, variables, s, _ = build("zoo_cnn")
    w = convert.flax_to_canonical(s, variables)
    ts = spec.spec_from_state_dict(_torch_state_dict(s, w))
    with pytest.raises(ValueError, match="spec_from_flax"):
        symmetry.permute(ts, w, jax.random.key(0))


def test_layout_must_be_contiguous():
    text = 'varname,start_idx,end_idx,shape\na/kernel:0,0,4,"(2, 2)"\na/bias:0,5,7,"(2,)"\n'
    with pytest.raises(ValueError, match="does not continue"):
        spec.spec_from_layout(convert.read_layout(text))


def test_batchnorm_after_a_nonlinearity_is_not_folded():
    """conv -> ReLU -> BatchNorm: the norm reads the conv through the ReLU, so folding it
    into the conv would change the function: the spec says so and fold refuses."""
    import flax.linen as nn

    from wsl.weights import fold

    class AfterRelu(nn.Module):
        pre_act: bool

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3))(x)
            if self.pre_act:
                x = nn.relu(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(3)(nn.relu(x).mean((1, 2)))

    x = jnp.ones((1, 6, 6, 2))
    for pre_act in (True, False):
        m = AfterRelu(pre_act)
        v = m.init(jax.random.key(0), x)
        s = spec.spec_from_flax(m, v, x)
        norm = s.layers[1]
        assert norm.kind == "norm" and norm.src == 0 and norm.direct is (not pre_act)
        w = convert.flax_to_canonical(s, v)
        if pre_act:
            with pytest.raises(ValueError, match="through a nonlinearity"):
                fold.fold_batchnorm(s, w)
            reparam, _ = fold.reparameterize_batchnorm(s, w)
            assert [layer.kind for layer in reparam.layers] == ["conv", "conv", "dense"]
        else:
            assert [layer.kind for layer in fold.fold_batchnorm(s, w)[0].layers] == [
                "conv",
                "dense",
            ]
