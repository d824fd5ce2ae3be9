"""H2SPG on user-declared removal structures: connectivity-constrained selection and the half-space step."""

import itertools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reg import functional
from keras_reg.optimizers import HierarchicalHalfSpaceProjectedGradient
from keras_reg.testing import contract

# input -> stem -> {a, b, c} -> add -> head -> output, plus a skip stem -> add
GRAPH = {"input": ["stem"], "stem": ["a", "b", "c", "add"], "a": ["add"], "b": ["add"], "c": ["add"],
         "add": ["head"], "head": ["output"]}


def reachable(adjacency, alive, source, sink):
    seen, stack = set(), [source] if alive[source] else []
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(j for j in range(len(alive)) if adjacency[node, j] and alive[j])
    return sink in seen


def greedy_reference(scores, membership, adjacency, source, sink, count):
    marks, alive = np.zeros(len(scores)), np.ones(adjacency.shape[0], bool)
    for g in np.argsort(-np.asarray(scores), kind="stable"):
        trial = alive & ~membership[g].astype(bool)
        if marks.sum() < count and reachable(adjacency, trial, source, sink):
            marks[g], alive = 1, trial
    return marks


def test_graph_reachability_matches_a_depth_first_search():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = 6
        adjacency = np.triu((rng.uniform(size=(n, n)) < 0.4).astype("float32"), 1)
        alive = (rng.uniform(size=n) < 0.8).astype("float32")
        got = bool(functional.graph_reachable(adjacency, alive, 0, n - 1))
        assert got == reachable(adjacency, alive, 0, n - 1)


def test_selection_never_disconnects_and_is_the_greedy_order():
    # a, b in parallel then head in series: head is never erasable, and not both of a and b.
    graph = {"input": ["a", "b"], "a": ["add"], "b": ["add"], "add": ["head"], "head": ["output"]}
    opt = HierarchicalHalfSpaceProjectedGradient(keras.optimizers.SGD(), ["head", "a", "b"], graph)
    marks = functional.connectivity_constrained_selection(
        np.array([3.0, 2.0, 1.0], "float32"), opt._membership, opt._adjacency, opt._source, opt._sink, 2.0)
    np.testing.assert_array_equal(np.asarray(marks), [0, 1, 0])  # head skipped, a taken, b would disconnect
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 7
        adjacency = np.triu((rng.uniform(size=(n, n)) < 0.5).astype("float32"), 1)
        adjacency[0, 1] = adjacency[1, n - 1] = 1.0  # at least one path
        membership = np.eye(n, dtype="float32")[1:n - 1]  # the inner nodes are the groups
        scores = rng.normal(size=n - 2).astype("float32")
        count = float(rng.integers(1, n - 2))
        got = functional.connectivity_constrained_selection(scores, membership, adjacency, 0, n - 1, count)
        np.testing.assert_array_equal(np.asarray(got), greedy_reference(scores, membership, adjacency, 0, n - 1,
                                                                        count))
        alive = np.ones(n, bool)
        alive[1:n - 1] = np.asarray(got) == 0
        assert reachable(adjacency, alive, 0, n - 1)
        # every subset of the selection is erasable too (what makes later partial projections safe)
        chosen = np.flatnonzero(np.asarray(got)) + 1
        for r in range(len(chosen) + 1):
            for subset in itertools.combinations(chosen, r):
                keep = np.ones(n, bool)
                keep[list(subset)] = False
                assert reachable(adjacency, keep, 0, n - 1)


def branchy_model(width=4):
    inputs = keras.Input((8,), name="input")
    stem = keras.layers.Dense(width, activation="relu", name="stem")(inputs)
    branches = [keras.layers.Dense(width, name=n)(stem) for n in ("a", "b", "c")]
    merged = keras.layers.Add(name="add")([stem] + branches)
    logits = keras.layers.Dense(3, name="head")(merged)
    return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32", name="probs")(logits))


def make_opt(**kwargs):
    args = dict(groups=["a", "b", "c", "head"], graph=GRAPH, target_group_sparsity=0.5, lmbda=0.05,
                tolerance_group_sparsity=0.0)
    args.update(kwargs)
    return HierarchicalHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), **args)


def test_one_step_matches_the_reference():
    model = branchy_model()
    rng = np.random.default_rng(2)
    variables = model.trainable_variables
    before = {v.path: v.numpy().astype(np.float64) for v in variables}
    grads = {v.path: rng.normal(size=v.shape) for v in variables}
    grads["b/kernel"] = before["b/kernel"] * 40  # b's trial step crosses its half-space
    grads["b/bias"] = before["b/bias"] * 40 + 0.3
    opt = make_opt()
    opt.apply([tf.constant(grads[v.path], "float32") for v in variables], variables)
    names = ["a", "b", "c", "head"]
    x = [np.concatenate([before[f"{n}/kernel"].ravel(), before[f"{n}/bias"].ravel()]) for n in names]
    g = [np.concatenate([grads[f"{n}/kernel"].ravel(), grads[f"{n}/bias"].ravel()]) for n in names]
    x_norm, g_norm = np.array([np.linalg.norm(v) for v in x]), np.array([np.linalg.norm(v) for v in g])
    inner = np.array([a @ b for a, b in zip(x, g)])
    dims = np.array([len(v) for v in x])
    cos = inner / np.maximum(x_norm * g_norm, 1e-8)
    inv = 1 / (x_norm / dims + 1e-6)
    scores = 0.5 * cos / np.linalg.norm(cos) + 0.5 * inv / np.linalg.norm(inv)
    marks = greedy_reference(scores, opt._membership, opt._adjacency, opt._source, opt._sink, 2)
    np.testing.assert_array_equal(np.asarray(opt._redundant), marks)
    assert marks[3] == 0  # the head is never redundant: erasing it disconnects the output
    expected = []
    for i in range(4):
        x_hat = x[i] - 0.1 * g[i]
        lam = 0.05
        if marks[i] and inner[i] < 0:
            lower, upper = -inner[i] / x_norm[i], -(g_norm[i] ** 2 * x_norm[i]) / inner[i]
            lam = np.clip(2.0 * lower, 0.05, 0.5)
            lam = (upper + lower) / 2 if lam >= upper else lam
        if marks[i]:
            x_hat = x_hat - 0.1 * lam * x[i] / (x_norm[i] + 1e-8)
            if x_hat @ x[i] < 0:  # the half-space projection (budget floor(0.5 * 4) = 2 is not hit)
                x_hat = np.zeros_like(x_hat)
        expected.append(x_hat)
    for i, n in enumerate(names):
        got = np.concatenate([model.get_layer(n).kernel.numpy().ravel(), model.get_layer(n).bias.numpy().ravel()])
        np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-6)
    assert marks[1] == 1 and np.all(model.get_layer("b").kernel.numpy() == 0)


def test_fit_erases_branches_not_the_path_and_erased_branches_can_be_dropped(tmp_path):
    x, y = contract.classification_data()
    model = branchy_model()
    opt = make_opt(lmbda=1.0, target_group_sparsity=0.5, partition_step=2, half_space_step=2)
    model.compile(opt, "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=15, verbose=0)
    zero = {n: not np.any(model.get_layer(n).kernel.numpy()) and not np.any(model.get_layer(n).bias.numpy())
            for n in ("a", "b", "c", "head")}
    assert sum(zero.values()) == 2 and not zero["head"]
    assert float(opt.group_sparsity()) == pytest.approx(0.5)
    # the erased branches contribute exactly zero: the sub-network without them computes the same outputs
    stem = model.get_layer("stem")
    h = np.maximum(x @ stem.kernel.numpy() + stem.bias.numpy(), 0)
    merged = h + sum(h @ model.get_layer(n).kernel.numpy() + model.get_layer(n).bias.numpy()
                     for n in ("a", "b", "c") if not zero[n])
    logits = merged @ model.get_layer("head").kernel.numpy() + model.get_layer("head").bias.numpy()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), model.predict(x, verbose=0), atol=1e-5)
    path = os.path.join(tmp_path, "h2.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded.optimizer._redundant), np.asarray(opt._redundant))
    assert loaded.optimizer.graph == GRAPH


def test_conv_and_dense_structures_of_different_sizes():
    # a conv branch (3*3*4*4 + 4 = 148 entries) and a Dense branch (4*4 + 4 = 20) as removal structures
    inputs = keras.Input((6, 6, 2), name="input")
    stem = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(stem)
    conv_branch = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same", name="c")(stem))
    dense_branch = keras.layers.Dense(4, name="a")(pooled)
    merged = keras.layers.Add(name="add")([pooled, conv_branch, dense_branch])
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", dtype="float32", name="head")(merged))
    graph = {"input": ["stem"], "stem": ["a", "c", "add"], "a": ["add"], "c": ["add"], "add": ["head"],
             "head": ["output"]}
    opt = HierarchicalHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), groups=["a", "c"], graph=graph,
                                                 target_group_sparsity=0.5, lmbda=1.0, tolerance_group_sparsity=0.0)
    x, y = contract.classification_data((6, 6, 2))
    model.compile(opt, "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=8, epochs=6, verbose=0)
    assert [int(x.shape[0]) for x in opt._current()] == [20, 148]
    assert np.all(np.isfinite(history.history["loss"]))
    assert float(np.asarray(opt._redundant).sum()) == 1.0  # K = floor(2 * 0.5): one of the two structures
    assert float(opt.group_sparsity()) == pytest.approx(0.5)


def test_bad_graphs_are_reported():
    sgd = keras.optimizers.SGD()
    with pytest.raises(ValueError, match="not a node"):
        HierarchicalHalfSpaceProjectedGradient(sgd, ["z"], GRAPH)
    with pytest.raises(ValueError, match="no path"):
        HierarchicalHalfSpaceProjectedGradient(sgd, ["a"], {"input": ["a"], "b": ["output"]})
    with pytest.raises(ValueError, match="sink"):
        HierarchicalHalfSpaceProjectedGradient(sgd, ["a"], GRAPH, sink="out")
    with pytest.raises(ValueError, match="erasable"):
        HierarchicalHalfSpaceProjectedGradient(sgd, ["a", "head"], GRAPH, sink="head")


contract.install(
    contract.ComponentCase(
        name="h2spg",
        make=lambda: make_opt(lmbda=0.01),
        model=lambda opt: branchy_model(),
        optimizer=contract.COMPONENT,
        distributed=True,
        bad_args=[
            (lambda: make_opt(groups=[]), "groups"),
            (lambda: make_opt(graph={}), "graph"),
            (lambda: make_opt(target_group_sparsity=1.0), "target_group_sparsity"),
            (lambda: make_opt(lmbda=-1.0), "lmbda"),
            (lambda: make_opt(hat_lmbda_coeff=0.5), "hat_lmbda_coeff"),
            (lambda: make_opt(half_space_step=-1), "half_space_step"),
        ],
    ),
    globals(),
)
