"""OTOv2's Dual Half-Space Projected Gradient (DHSPG) over user-declared zero-invariant groups."""

import numpy as np
from keras import ops

from keras_reg import functional
from keras_reg.catalogue import technique
from keras_reg.optimizers.wrapper import GradientTransformOptimizer
from keras_reg.optimizers.wrapper import assign_variables
from keras_reg.utils.validation import check_non_negative
from keras_reg.utils.validation import check_non_negative_int
from keras_reg.utils.validation import check_positive
from keras_reg.utils.validation import check_probability

_PAPER = "OTOV2: Automatic, Generic, User-Friendly"
_PAPER_V3 = (
    "OTOv3: Automatic Architecture-Agnostic Neural Network Training and Compression from Structured Pruning to "
    "Erasing Operators"
)


def _group_matrix(kernel, bias):
    """(groups, d): output unit j of a Dense/Conv kernel (its last axis) together with bias[j]."""
    n = kernel.shape[-1]
    rows = ops.transpose(ops.reshape(kernel, (-1, n)))
    if bias is not None:
        rows = ops.concatenate([rows, ops.reshape(bias, (n, 1))], axis=1)
    return rows


def _set_dhspg_hyperparameters(opt, target_group_sparsity, lmbda, lmbda_amplify, hat_lmbda_coeff, epsilon,
                               tolerance_group_sparsity, partition_step, half_space_step):
    """Validates and sets the DHSPG step's hyper-parameters (shared by DHSPG and H2SPG)."""
    opt.target_group_sparsity = check_probability(target_group_sparsity, "target_group_sparsity")
    if opt.target_group_sparsity == 0:
        raise ValueError("`target_group_sparsity` must be in (0, 1). Received: target_group_sparsity=0")
    opt.lmbda = check_non_negative(lmbda, "lmbda")
    opt.lmbda_amplify = check_non_negative(lmbda_amplify, "lmbda_amplify")
    opt.hat_lmbda_coeff = check_positive(hat_lmbda_coeff, "hat_lmbda_coeff")
    if opt.hat_lmbda_coeff < 1:
        raise ValueError(f"`hat_lmbda_coeff` must be >= 1. Received: hat_lmbda_coeff={hat_lmbda_coeff!r}")
    opt.epsilon = check_probability(epsilon, "epsilon")
    opt.tolerance_group_sparsity = check_probability(tolerance_group_sparsity, "tolerance_group_sparsity")
    opt.partition_step = check_non_negative_int(partition_step, "partition_step")
    opt.half_space_step = check_non_negative_int(half_space_step, "half_space_step")


_DHSPG_HYPERPARAMETERS = ("target_group_sparsity", "lmbda", "lmbda_amplify", "hat_lmbda_coeff", "epsilon",
                          "tolerance_group_sparsity", "partition_step", "half_space_step")


def _dhspg_hyperparameters(opt):
    """The config entries `_set_dhspg_hyperparameters` set."""
    return {name: getattr(opt, name) for name in _DHSPG_HYPERPARAMETERS}


@technique("OTOv2-DHSPG", paper=_PAPER, year=2023, kind="optimizer")
@technique("OTOv3-DHSPG", paper=_PAPER_V3, year=2023, kind="optimizer",
           note="DHSPG on user-declared groups; H2SPG is HierarchicalHalfSpaceProjectedGradient; the automatic "
           "dependency-graph search space is not built")
class DualHalfSpaceProjectedGradient(GradientTransformOptimizer):
    """Structured sparsity by OTOv2's DHSPG: penalize a chosen set of groups and project them onto zero.

    From Chen et al., "OTOV2: Automatic, Generic, User-Friendly" (ICLR 2023); the same DHSPG step is used by
    "OTOv3: Automatic Architecture-Agnostic Neural Network Training and Compression from Structured Pruning to
    Erasing Operators" (2023), whose hierarchical H2SPG variant is `HierarchicalHalfSpaceProjectedGradient`. The
    groups are user-declared: each output unit of the named Dense/Conv layers together with its bias (automatic
    zero-invariant-group discovery is out of scope). Following the authors' public DHSPG code (its "sgd" variant):

    * at step `partition_step`, score every group by 0.5 * normalize(cos(-x, -g)) + 0.5 * normalize(1 / (||x|| / d))
      over all groups (d: the group's own size, which may differ between layers) and mark the top
      K = floor(G * min(target + tolerance, 0.999)) as redundant;
    * every step, after the inner optimizer's trial step x_hat = inner(x, g), redundant groups also move along the
      group-norm subgradient, with an adaptive lambda while the group sparsity is below `target_group_sparsity`
      (the base lmbda afterwards):

          lambda_g = lmbda, or, when <x, g> < 0:  clip(amplify * (-<x,g>/||x||), lmbda, lmbda * hat_coeff)
                     (the midpoint of [-<x,g>/||x||, -||g||^2 ||x|| / <x,g>] if it exceeds the upper bound)
          x_hat_g <- x_hat_g - lr * lambda_g * x_g / ||x_g||

    * from step `half_space_step`, while below the target, the half-space projection: a redundant group with <x_hat_g, x_g> < eps ||x_g||^2
      is set exactly to 0 (at most up to the target sparsity over all groups: smallest <x_hat, x>/||x||^2 first,
      where the code caps each layer and picks at random);
    * groups that are exactly 0 stay 0.

    With plain SGD as the inner optimizer this is the code's update; with another inner optimizer the penalty and
    projection act on its trial point. The redundancy marks are optimizer variables (saved and resumed).

    Args:
        inner_optimizer: the Keras optimizer producing the trial step (SGD reproduces the paper's variant).
        layers: names of the Dense/Conv layers whose output units form the groups.
        target_group_sparsity: the target fraction of zero groups, in (0, 1).
        lmbda: base penalty coefficient, >= 0 (the code's SGD default 1e-3).
        lmbda_amplify: amplification of the lower bound, >= 0 (default 2).
        hat_lmbda_coeff: upper clip as a multiple of lmbda, >= 1 (default 10).
        epsilon: half-space control, in [0, 1) (default 0).
        tolerance_group_sparsity: extra fraction of groups marked redundant, in [0, 1) (default 0.05).
        partition_step: step at which groups are partitioned, >= 0.
        half_space_step: step from which the projection runs, >= 0.

    Example:
        >>> opt = keras_reg.optimizers.DualHalfSpaceProjectedGradient(
        ...     keras.optimizers.SGD(0.1), layers=["conv1", "conv2"], target_group_sparsity=0.5)
        >>> model.compile(opt, "sparse_categorical_crossentropy"); model.fit(x, y, epochs=30)
    """

    def __init__(self, inner_optimizer, layers, target_group_sparsity=0.5, lmbda=1e-3, lmbda_amplify=2.0,
                 hat_lmbda_coeff=10.0, epsilon=0.0, tolerance_group_sparsity=0.05, partition_step=0,
                 half_space_step=0, name="dhspg", **kwargs):
        super().__init__(inner_optimizer, name=name, **kwargs)
        if isinstance(layers, str) or not layers or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"`layers` must be a non-empty list of layer names. Received: layers={layers!r}")
        self.layers = list(layers)
        _set_dhspg_hyperparameters(self, target_group_sparsity, lmbda, lmbda_amplify, hat_lmbda_coeff, epsilon,
                                   tolerance_group_sparsity, partition_step, half_space_step)
        self._pairs = None

    def _find_pairs(self, var_list):
        by_path = {v.path: v for v in var_list}
        pairs = []
        for name in self.layers:
            kernel = by_path.get(f"{name}/kernel")
            if kernel is None:
                candidates = [v for p, v in by_path.items() if p.endswith(f"{name}/kernel")]
                if len(candidates) != 1:
                    raise ValueError(f"Cannot find the kernel of layer {name!r} (`layers`) among the trained variables.")
                kernel = candidates[0]
            prefix = kernel.path[: -len("kernel")]
            pairs.append((kernel, by_path.get(prefix + "bias")))
        return pairs

    def build_wrapper(self, var_list):
        if self._pairs is None:
            self._pairs = self._find_pairs(var_list)
        self._redundant = [
            self.add_variable((k.shape[-1],), initializer="zeros", dtype="float32", name="redundant")
            for k, _ in self._pairs
        ]
        self._partitioned = self.add_variable((), initializer="zeros", dtype="float32", name="partitioned")

    def _groups(self, values):
        return [_group_matrix(ops.cast(k, "float32"), None if b is None else ops.cast(b, "float32")) for k, b in values]

    def _current(self):
        return self._groups([(k.value, None if b is None else b.value) for k, b in self._pairs])

    def group_sparsity(self):
        """The fraction of groups that are exactly zero."""
        groups = self._current()
        zero = sum(ops.sum(ops.cast(ops.norm(x, axis=1) == 0, "float32")) for x in groups)
        return zero / float(sum(int(x.shape[0]) for x in groups))

    def transform_gradients(self, grads, variables):
        keys = {self._var_key(v): g for g, v in zip(grads, variables)}
        self._x_before = self._current()
        self._g_before = []
        for kernel, bias in self._pairs:
            gk = keys.get(self._var_key(kernel))
            gb = None if bias is None else keys.get(self._var_key(bias))
            gk = ops.zeros(kernel.shape) if gk is None else gk
            if bias is not None and gb is None:
                gb = ops.zeros(bias.shape)
            self._g_before.append(
                _group_matrix(ops.cast(gk, "float32"), None if bias is None else ops.cast(gb, "float32"))
            )
        self._sparsity_before = self.group_sparsity()
        return grads

    def _partition(self):
        xs, gs = self._x_before, self._g_before
        # Per-group quantities are computed per layer (its groups have its own width d: a conv filter and a Dense
        # unit differ) and only the (groups,) vectors are concatenated; the normalizations run over all groups.
        cos = ops.concatenate([
            ops.sum(x * g, axis=1) / ops.maximum(ops.norm(x, axis=1) * ops.norm(g, axis=1), 1e-8)
            for x, g in zip(xs, gs)
        ], axis=0)
        norm_avg = ops.concatenate([ops.norm(x, axis=1) / float(x.shape[1]) for x in xs], axis=0)
        inv = 1.0 / (norm_avg + 1e-6)
        scores = 0.5 * cos / ops.maximum(ops.norm(cos), 1e-12) + 0.5 * inv / ops.maximum(ops.norm(inv), 1e-12)
        total = int(cos.shape[0])
        k = int(total * min(self.target_group_sparsity + self.tolerance_group_sparsity, 0.999))
        marks = ops.zeros((total,))
        if k > 0:
            _, top = ops.top_k(scores, k)
            marks = ops.scatter_update(marks, ops.reshape(top, (-1, 1)), ops.ones((k,)))
        out, start = [], 0
        for xi in xs:
            n = int(xi.shape[0])
            out.append(marks[start : start + n])
            start += n
        return out

    def after_apply(self, variables):
        step = ops.cast(self.iterations, "float32")  # already incremented by the inner step: this step = it - 1
        step = step - 1.0
        do_partition = ops.logical_and(self._partitioned < 0.5, step >= float(self.partition_step))
        new_marks = self._partition()
        marks = [ops.where(do_partition, n, r) for n, r in zip(new_marks, self._redundant)]
        lr = ops.cast(self.inner_optimizer.learning_rate, "float32")
        below_target = self._sparsity_before < self.target_group_sparsity
        project = ops.logical_and(below_target, step + 1.0 >= float(self.half_space_step))
        x_hats = []
        for (kernel, bias), x, g, mark in zip(self._pairs, self._x_before, self._g_before, marks):
            x_hat = _group_matrix(ops.cast(kernel.value, "float32"), None if bias is None else ops.cast(bias.value, "float32"))
            x_norm = ops.norm(x, axis=1)
            g_norm = ops.norm(g, axis=1)
            inner = ops.sum(x * g, axis=1)
            adjust = ops.logical_and(mark > 0.5, inner < 0)
            safe_x = ops.maximum(x_norm, 1e-12)
            safe_inner = ops.where(inner < 0, inner, -1.0)
            lower = -inner / safe_x
            upper = -(g_norm * g_norm * x_norm) / safe_inner
            lam_adj = ops.clip(self.lmbda_amplify * lower, self.lmbda, self.lmbda * self.hat_lmbda_coeff)
            lam_adj = ops.where(lam_adj >= upper, (upper + lower) / 2.0, lam_adj)
            # After the target is reached, redundant groups keep the base lambda (and are no longer projected).
            lam = ops.where(ops.logical_and(adjust, below_target), lam_adj, self.lmbda)
            direction = ops.where((x_norm > 0)[:, None], x / (x_norm + 1e-8)[:, None], 0.0)
            x_hat = x_hat - ops.where((mark > 0.5)[:, None], lr * lam[:, None] * direction, 0.0)
            x_hats.append((x_hat, x, x_norm, mark))
        # Half-space projection over all redundant groups together, capped at the target sparsity.
        ratios, candidates, zeros = [], [], []
        for x_hat, x, x_norm, mark in x_hats:
            dot = ops.sum(x_hat * x, axis=1)
            cand = ops.logical_and(mark > 0.5, dot < self.epsilon * x_norm * x_norm)
            cand = ops.logical_and(cand, x_norm > 0)
            candidates.append(ops.logical_and(cand, project))
            ratios.append(dot / ops.maximum(x_norm * x_norm, 1e-30))
            zeros.append(x_norm == 0)
        all_cand = ops.concatenate(candidates, axis=0)
        all_ratio = ops.concatenate(ratios, axis=0)
        total = int(all_cand.shape[0])
        already = ops.sum(ops.cast(ops.concatenate(zeros, axis=0), "float32"))
        budget = ops.maximum(ops.floor(self.target_group_sparsity * total) - already, 0.0)
        # rank candidates by ratio (smallest first); keep those whose rank < budget
        key = ops.where(all_cand, all_ratio, 1e30)
        order = ops.argsort(key)
        rank = ops.scatter_update(ops.zeros((total,), "int32"), ops.reshape(order, (-1, 1)),
                                  ops.arange(total, dtype="int32"))
        chosen = ops.logical_and(all_cand, ops.cast(rank, "float32") < budget)
        new_values, start = [], 0
        for (kernel, bias), (x_hat, x, x_norm, mark) in zip(self._pairs, x_hats):
            n = int(x.shape[0])
            zero_out = ops.logical_or(chosen[start : start + n], x_norm == 0)
            start += n
            x_hat = ops.where(zero_out[:, None], 0.0, x_hat)
            k_part = x_hat[:, : -1] if bias is not None else x_hat
            new_kernel = ops.reshape(ops.transpose(k_part), kernel.shape)
            new_values.append((kernel, new_kernel))
            if bias is not None:
                new_values.append((bias, x_hat[:, -1]))
        assign_variables([v for v, _ in new_values], [val for _, val in new_values])
        assign_variables(
            self._redundant + [self._partitioned],
            marks + [ops.where(do_partition, 1.0, self._partitioned)],
        )

    def get_config(self):
        config = super().get_config()
        config.update({
            "layers": list(self.layers),
            **_dhspg_hyperparameters(self),
        })
        return config


def _check_graph(groups, graph, source, sink):
    if isinstance(groups, (list, tuple)):
        groups = {name: [name] for name in groups}
    if not isinstance(groups, dict) or not groups:
        raise ValueError("`groups` must be a non-empty list of layer names or a dict {group name: [layer names]}.")
    for name, layers in groups.items():
        if not isinstance(name, str) or isinstance(layers, str) or not layers \
                or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"`groups` must map each group name to a non-empty list of layer names. Got {name!r}.")
    if not isinstance(graph, dict) or not graph:
        raise ValueError("`graph` must be a non-empty dict {node: [successor nodes]}.")
    nodes = set(graph)
    for node, successors in graph.items():
        if isinstance(successors, str) or not all(isinstance(s, str) for s in successors):
            raise ValueError(f"`graph` must map each node to a list of successor node names. Got {node!r}.")
        nodes.update(successors)
    for name in groups:
        if name not in nodes:
            raise ValueError(f"Group {name!r} of `groups` is not a node of `graph`.")
    for arg, value in (("source", source), ("sink", sink)):
        if value not in nodes:
            raise ValueError(f"`{arg}` must be a node of `graph`. Received: {arg}={value!r}")
        if value in groups:
            raise ValueError(f"`{arg}` ({value!r}) cannot be an erasable group.")
    order = sorted(nodes)
    index = {n: i for i, n in enumerate(order)}
    adjacency = np.zeros((len(order), len(order)), "float32")
    for node, successors in graph.items():
        for s in successors:
            adjacency[index[node], index[s]] = 1.0
    membership = np.zeros((len(groups), len(order)), "float32")
    for i, name in enumerate(groups):
        membership[i, index[name]] = 1.0
    if not _reachable_np(adjacency, np.ones(len(order)), index[source], index[sink]):
        raise ValueError(f"`graph` has no path from {source!r} to {sink!r}.")
    return {k: list(v) for k, v in groups.items()}, adjacency, membership, index[source], index[sink]


def _reachable_np(adjacency, alive, source, sink):
    seen, stack = set(), [source] if alive[source] else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(int(j) for j in np.flatnonzero(adjacency[node]) if alive[j] and j not in seen)
    return sink in seen


@technique("OTOv3-H2SPG", paper=_PAPER_V3, year=2023, kind="optimizer",
           note="on user-declared removal structures and a user-declared graph; the automatic dependency-graph "
           "construction of OTOv3 is not built, and the selection score is DHSPG's (the H2SPG paper text and code "
           "could not be checked)")
class HierarchicalHalfSpaceProjectedGradient(GradientTransformOptimizer):
    """H2SPG on user-declared removal structures: DHSPG's steps, but never erasing a set that disconnects the graph.

    From "OTOv3: Automatic Architecture-Agnostic Neural Network Training and Compression from Structured Pruning to
    Erasing Operators" (Chen et al., 2023), whose hierarchical half-space projected gradient (H2SPG, first proposed
    for automated search-space NAS) solves structured sparsity over *removal structures* (whole operators or
    branches) while keeping the sub-network valid: erasing a set of structures must leave the network's graph
    connected from input to output. Here the removal structures (`groups`: each one or more layers, all of whose
    kernel and bias entries form one group x_g) and the graph (`graph`: node -> successor nodes, with the groups
    among its nodes) are declared by the user; OTOv3's automatic dependency-graph construction is not built.

    * at step `partition_step`, the redundant set R is chosen hierarchically: groups sorted by DHSPG's score
      0.5 normalize(cos(x, g)) + 0.5 normalize(1 / (||x|| / d)), and taken greedily while |R| < K =
      floor(G min(target + tolerance, 0.999)) and the graph without the nodes of R stays connected from `source`
      to `sink` (`functional.connectivity_constrained_selection`). Any subset of R is then also safe to erase;
    * every step, after the inner optimizer's trial step x_hat = inner(x, g), groups in R move along the group-norm
      subgradient with DHSPG's adaptive lambda (the base lmbda once the target sparsity is reached):
      x_hat_g <- x_hat_g - lr lambda_g x_g / ||x_g||;
    * from `half_space_step`, while below the target, a group of R with <x_hat_g, x_g> < eps ||x_g||^2 is set
      exactly to 0 (smallest <x_hat, x> / ||x||^2 first, up to floor(target G) zero groups); zero groups stay 0.

    The selection score is the one of the authors' public DHSPG code: the H2SPG paper's own score and the code of
    its hierarchical search were not reachable in the sources searched (no H2SPG implementation is in the public
    index), so only its validity constraint is implemented. The marks of R are optimizer variables (saved and
    resumed). Erasing a structure must not change the network beyond removing its contribution (e.g. a residual
    branch whose zero output is added to a skip path): the user declares structures for which that holds.

    Args:
        inner_optimizer: the Keras optimizer producing the trial step (SGD reproduces the DHSPG variant).
        groups: list of layer names (one structure each) or dict {structure name: [layer names]}.
        graph: dict {node: [successor nodes]}; the structure names are nodes, other nodes are fixed (input, merges).
        source, sink: the graph's input and output nodes.
        target_group_sparsity: the target fraction of erased structures, in (0, 1).
        lmbda, lmbda_amplify, hat_lmbda_coeff, epsilon, tolerance_group_sparsity, partition_step, half_space_step:
            as in `DualHalfSpaceProjectedGradient`.

    Example:
        >>> graph = {"input": ["branch_a", "branch_b", "add"], "branch_a": ["add"], "branch_b": ["add"],
        ...          "add": ["output"]}
        >>> opt = keras_reg.optimizers.HierarchicalHalfSpaceProjectedGradient(
        ...     keras.optimizers.SGD(0.1), groups=["branch_a", "branch_b"], graph=graph, target_group_sparsity=0.5)
        >>> model.compile(opt, "sparse_categorical_crossentropy"); model.fit(x, y, epochs=30)
    """

    def __init__(self, inner_optimizer, groups, graph, source="input", sink="output", target_group_sparsity=0.5,
                 lmbda=1e-3, lmbda_amplify=2.0, hat_lmbda_coeff=10.0, epsilon=0.0, tolerance_group_sparsity=0.05,
                 partition_step=0, half_space_step=0, name="h2spg", **kwargs):
        super().__init__(inner_optimizer, name=name, **kwargs)
        self.groups, self._adjacency, self._membership, self._source, self._sink = _check_graph(
            groups, graph, source, sink)
        self.graph = {k: list(v) for k, v in graph.items()}
        self.source, self.sink = source, sink
        _set_dhspg_hyperparameters(self, target_group_sparsity, lmbda, lmbda_amplify, hat_lmbda_coeff, epsilon,
                                   tolerance_group_sparsity, partition_step, half_space_step)
        self._members = None

    def build_wrapper(self, var_list):
        by_path = {v.path: v for v in var_list}
        self._members = []
        for name, layers in self.groups.items():
            members = []
            for layer in layers:
                found = [v for p, v in by_path.items()
                         if p.rsplit("/", 1)[0] == layer or p.rsplit("/", 1)[0].endswith(f"/{layer}")]
                if not found:
                    raise ValueError(f"Layer {layer!r} of group {name!r} (`groups`) has no trained variable.")
                members.extend(found)
            self._members.append(members)
        self._redundant = self.add_variable((len(self.groups),), initializer="zeros", dtype="float32",
                                            name="redundant")
        self._partitioned = self.add_variable((), initializer="zeros", dtype="float32", name="partitioned")

    @staticmethod
    def _flat(values):
        return ops.concatenate([ops.reshape(ops.cast(v, "float32"), (-1,)) for v in values], axis=0)

    def _current(self):
        return [self._flat([v.value for v in members]) for members in self._members]

    def group_sparsity(self):
        """The fraction of structures that are exactly zero."""
        norms = ops.stack([ops.norm(x) for x in self._current()])
        return ops.mean(ops.cast(norms == 0, "float32"))

    def transform_gradients(self, grads, variables):
        keys = {self._var_key(v): g for g, v in zip(grads, variables)}
        self._x_before = self._current()
        self._g_before = []
        for members in self._members:
            parts = [keys.get(self._var_key(v)) for v in members]
            parts = [ops.zeros(v.shape) if g is None else g for g, v in zip(parts, members)]
            self._g_before.append(self._flat(parts))
        self._sparsity_before = self.group_sparsity()
        return grads

    def after_apply(self, variables):
        step = ops.cast(self.iterations, "float32") - 1.0  # the inner step already counted this one
        xs, gs = self._x_before, self._g_before
        x_norm = ops.stack([ops.norm(x) for x in xs])
        g_norm = ops.stack([ops.norm(g) for g in gs])
        inner = ops.stack([ops.sum(x * g) for x, g in zip(xs, gs)])
        dims = np.array([int(x.shape[0]) for x in xs], "float32")
        total = len(xs)
        count = float(int(total * min(self.target_group_sparsity + self.tolerance_group_sparsity, 0.999)))
        new_marks = functional.connectivity_constrained_selection(
            functional.half_space_scores(inner, x_norm, g_norm, dims), self._membership, self._adjacency,
            self._source, self._sink, count)
        do_partition = ops.logical_and(self._partitioned < 0.5, step >= float(self.partition_step))
        marks = ops.where(do_partition, new_marks, self._redundant)
        lr = ops.cast(self.inner_optimizer.learning_rate, "float32")
        below_target = self._sparsity_before < self.target_group_sparsity
        project = ops.logical_and(below_target, step + 1.0 >= float(self.half_space_step))
        # DHSPG's adaptive lambda for redundant groups with <x, g> < 0 (the base lambda otherwise).
        safe_x = ops.maximum(x_norm, 1e-12)
        lower = -inner / safe_x
        upper = -(g_norm * g_norm * x_norm) / ops.where(inner < 0, inner, -1.0)
        lam_adj = ops.clip(self.lmbda_amplify * lower, self.lmbda, self.lmbda * self.hat_lmbda_coeff)
        lam_adj = ops.where(lam_adj >= upper, (upper + lower) / 2.0, lam_adj)
        adjust = ops.logical_and(ops.logical_and(marks > 0.5, inner < 0), below_target)
        lam = ops.where(adjust, lam_adj, self.lmbda)
        x_hats, ratios = [], []
        for i, x in enumerate(xs):
            x_hat = self._current()[i]
            direction = ops.where(x_norm[i] > 0, x / (x_norm[i] + 1e-8), ops.zeros_like(x))
            x_hat = x_hat - ops.where(marks[i] > 0.5, lr * lam[i], 0.0) * direction
            x_hats.append(x_hat)
            ratios.append(ops.sum(x_hat * x) / ops.maximum(x_norm[i] * x_norm[i], 1e-30))
        ratio = ops.stack(ratios)
        candidates = ops.logical_and(marks > 0.5, ratio < self.epsilon)
        candidates = ops.logical_and(ops.logical_and(candidates, x_norm > 0), project)
        already = ops.sum(ops.cast(x_norm == 0, "float32"))
        budget = ops.maximum(float(int(self.target_group_sparsity * total)) - already, 0.0)
        key = ops.where(candidates, ratio, 1e30)
        rank = ops.scatter_update(ops.zeros((total,), "int32"), ops.reshape(ops.argsort(key), (-1, 1)),
                                  ops.arange(total, dtype="int32"))
        chosen = ops.logical_or(ops.logical_and(candidates, ops.cast(rank, "float32") < budget), x_norm == 0)
        targets, values = [], []
        for i, members in enumerate(self._members):
            x_hat = ops.where(chosen[i], ops.zeros_like(x_hats[i]), x_hats[i])
            start = 0
            for v in members:
                size = int(np.prod(v.shape))
                targets.append(v)
                values.append(ops.reshape(x_hat[start:start + size], v.shape))
                start += size
        assign_variables(targets, values)
        assign_variables([self._redundant, self._partitioned], [marks, ops.where(do_partition, 1.0, self._partitioned)])

    def get_config(self):
        config = super().get_config()
        config.update({
            "groups": {k: list(v) for k, v in self.groups.items()},
            "graph": {k: list(v) for k, v in self.graph.items()},
            "source": self.source,
            "sink": self.sink,
            **_dhspg_hyperparameters(self),
        })
        return config
