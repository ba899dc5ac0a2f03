"""compute.layers.maxflow against networkx, on general and layered networks, and its certificates' soundness."""

from __future__ import annotations

import numpy as np
import pytest

nx = pytest.importorskip("networkx")

from compute.layers.flow_pool import batched_layered_max_flows  # noqa: E402
from compute.layers.maxflow import (  # noqa: E402
    LayeredFlows, MaxFlowError, layered_max_flows, max_flow, max_flow_value,
)

TOL = 1e-9


def nx_value(cap: np.ndarray, s, t) -> float:
    g = nx.DiGraph()
    g.add_nodes_from(range(cap.shape[0]))
    for u, v in zip(*np.nonzero(cap)):
        g.add_edge(int(u), int(v), capacity=float(cap[u, v]))
    return float(nx.maximum_flow_value(g, s, t))


def layered_nx_graph(caps: np.ndarray):
    L, N, _ = caps.shape
    g = nx.DiGraph()
    for l in range(L):
        for j in range(N):
            for i in range(N):
                g.add_edge((l, i), (l + 1, j), capacity=float(caps[l, j, i]))
    return g


def layered_dense(caps: np.ndarray) -> np.ndarray:
    """The same layered network as one adjacency matrix; node (l, i) = l * N + i."""
    L, N, _ = caps.shape
    a = np.zeros(((L + 1) * N, (L + 1) * N))
    for l in range(L):
        a[l * N:(l + 1) * N, (l + 1) * N:(l + 2) * N] = caps[l].T
    return a


def random_caps(rng, n_shape, kind: str) -> np.ndarray:
    x = rng.exponential(size=n_shape) * (rng.random(n_shape) < rng.uniform(0.2, 1.0))
    if kind == "wide":  # capacities over twelve orders of magnitude
        x = x * 10.0 ** rng.uniform(-9, 3, size=n_shape)
    elif kind == "integer":
        x = np.round(x * 3)
    elif kind == "ties":  # many equal capacities: many minimum cuts
        x = (x > 0).astype(float) * rng.choice([0.25, 0.5, 1.0], size=n_shape)
    return x


def widest_path(caps: np.ndarray, source: int, sink: int) -> float:
    """Largest bottleneck of a single path (max-min dynamic programme over the layers)."""
    best = np.full(caps.shape[1], -np.inf)
    best[source] = np.inf
    for layer in caps:
        best = np.max(np.minimum(layer, best[None, :]), axis=1)
    return float(best[sink])


# ---------------------------------------------------------------------------------------------------------
# general networks


@pytest.mark.parametrize("kind", ["plain", "wide", "integer", "ties"])
def test_general_networks_match_networkx(kind):
    rng = np.random.default_rng({"plain": 0, "wide": 1, "integer": 2, "ties": 3}[kind])
    exact = 0
    for _ in range(60):
        n = int(rng.integers(2, 13))
        cap = random_caps(rng, (n, n), kind)
        s, t = (int(v) for v in rng.choice(n, 2, replace=False))
        got = max_flow(cap, s, t)
        want = nx_value(cap, s, t)
        assert abs(got.value - want) <= TOL * max(1.0, want), (got, want)
        assert got.lower <= want + TOL * max(1.0, want) and want <= got.upper + TOL * max(1.0, want)
        assert got.upper - got.lower <= 1e-12 * max(1.0, got.upper) * 1.01
        exact += got.exact
    assert exact > 0  # some were proved by a cut certificate


def test_general_network_from_sparse_input_and_duplicates():
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(3, 10))
        m = int(rng.integers(1, 3 * n))
        r, c = rng.integers(0, n, m), rng.integers(0, n, m)
        v = rng.exponential(size=m)
        coo = sp.coo_array((v, (r, c)), shape=(n, n))  # duplicate arcs add up, self-loops are ignored
        dense = np.zeros((n, n))
        np.add.at(dense, (r, c), v)
        np.fill_diagonal(dense, 0)
        assert abs(max_flow_value(coo, 0, n - 1) - nx_value(dense, 0, n - 1)) <= TOL


def test_general_edge_cases():
    assert max_flow_value(np.zeros((4, 4)), 0, 3) == 0.0
    cap = np.zeros((4, 4))
    cap[1, 2] = cap[2, 3] = 1.0  # the source has no arc
    assert max_flow_value(cap, 0, 3) == 0.0
    cap[0, 1] = 2.0
    cap[2, 3] = 0.0  # nothing enters the sink
    assert max_flow_value(cap, 0, 3) == 0.0
    cap[3, 0] = 5.0  # arcs into the source / out of the sink change nothing
    cap[1, 3] = 0.75
    assert max_flow_value(cap, 0, 3) == pytest.approx(0.75, abs=1e-15)
    with pytest.raises(MaxFlowError):
        max_flow_value(cap, 1, 1)
    with pytest.raises(MaxFlowError):
        max_flow_value(-cap, 0, 3)
    bad = cap.copy()
    bad[0, 2] = np.nan
    with pytest.raises(MaxFlowError):
        max_flow_value(bad, 0, 3)
    with pytest.raises(MaxFlowError):
        max_flow_value(np.ones((3, 4)), 0, 2)


def test_cut_certificate_is_not_fooled_by_a_cut_below_rounding_resolution():
    """Both trivial cuts are 1, a middle cut is 1 - 1e-11: far below 2**-30, the integer resolution."""
    eps = 1e-11
    cap = np.zeros((4, 4))
    cap[0, 1], cap[1, 2], cap[2, 3] = 1.0, 1.0 - eps, 1.0
    got = max_flow(cap, 0, 3)
    assert not got.exact or got.value == 1.0 - eps
    assert abs(got.value - (1.0 - eps)) <= 1e-13
    # the same in a layered network, from a wide source
    caps = np.zeros((3, 5, 5))
    caps[0][:, 0] = 0.2  # source token 0 -> every token of layer 1, 1.0 in all
    caps[1][2, :] = 0.2  # every token -> token 2 of layer 2, 1.0 in all
    caps[1][2, 4] = 0.2 - eps
    caps[2][0, 2] = 1.0  # token 2 -> sink token 0
    assert abs(layered_max_flows(caps, [0], 0)[0] - (1.0 - eps)) <= 1e-13
    caps[1][2, 4] = 0.2
    assert layered_max_flows(caps, [0], 0)[0] == pytest.approx(1.0, abs=1e-15)


def test_minimum_cut_made_of_arcs_below_rounding_resolution():
    """A middle cut of many arcs far smaller than 2**-30 of the flow: none may be lost when it is certified."""
    rng = np.random.default_rng(8)
    for trial in range(30):
        L, N = int(rng.integers(3, 6)), int(rng.integers(3, 10))
        caps = rng.random((L, N, N))
        layer = int(rng.integers(1, L - 1))
        keep = rng.random(N) < 0.5  # tokens of layer `layer` whose outgoing arcs stay normal
        caps[layer][:, ~keep] *= 10.0 ** rng.uniform(-15, -9, size=(N, int((~keep).sum())))
        caps[layer][:, keep] *= 10.0 ** rng.uniform(-15, -9) if trial % 2 else 1.0
        sink = int(rng.integers(N))
        got = layered_max_flows(caps, range(N), sink)
        g = layered_nx_graph(caps)
        for p in range(N):
            want = nx.maximum_flow_value(g, (0, p), (L, sink))
            assert abs(got[p] - want) <= 1e-12 * max(want, 1e-300) + 1e-300, (trial, p, got[p], want)


# ---------------------------------------------------------------------------------------------------------
# layered networks


@pytest.mark.parametrize("normalised", [False, True])
def test_layered_networks_match_networkx(normalised):
    rng = np.random.default_rng(10 + normalised)
    stats: dict = {}
    for trial in range(70):
        L, N = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        caps = random_caps(rng, (L, N, N), ["plain", "wide", "integer", "ties"][trial % 4])
        if normalised:
            caps = caps + np.eye(N)
            caps = caps / caps.sum(axis=-1, keepdims=True)
        sink = int(rng.integers(N))
        # tiny sparse tiers so that the certificate on a subnetwork is exercised too
        got = layered_max_flows(caps, range(N), sink, tiers=((1, 1, 1), (2, 2, 1)), stats=stats)
        g = layered_nx_graph(caps)
        for p in range(N):
            want = nx.maximum_flow_value(g, (0, p), (L, sink))
            assert abs(got[p] - want) <= TOL * max(1.0, want), (trial, p, got[p], want)
    assert stats["refined"] > 0 and stats["full"] > 0 and (normalised or stats["zero"] > 0)
    assert stats["tier0"] + stats["tier1"] > 0


def test_layered_agrees_with_the_general_routine():
    rng = np.random.default_rng(3)
    for _ in range(10):
        L, N = int(rng.integers(2, 6)), int(rng.integers(2, 10))
        caps = rng.exponential(size=(L, N, N))
        dense = layered_dense(caps)
        got = layered_max_flows(caps, range(N), 1)
        for p in range(N):
            assert abs(got[p] - max_flow_value(dense, p, L * N + 1)) <= 1e-12 * max(1.0, got[p])


def attention_like(rng, L, N, heads=4, temperature=3.0, residual=0.5):
    scores = rng.standard_normal((L, heads, N, N)) * temperature
    a = np.exp(scores - scores.max(-1, keepdims=True))
    a = (a / a.sum(-1, keepdims=True)).mean(1)
    m = (1 - residual) * a + residual * np.eye(N)
    return m / m.sum(-1, keepdims=True)


def test_attention_like_networks_with_default_tiers_match_networkx():
    """Dense, softmax-like layers of realistic width: the sparse-tier certificates at the size they are made for."""
    rng = np.random.default_rng(7)
    caps = attention_like(rng, L=5, N=48, temperature=2.0)
    stats: dict = {}
    got = layered_max_flows(caps, [1, 5, 17, 30, 47], 0, stats=stats)
    g = layered_nx_graph(caps)
    for value, p in zip(got, [1, 5, 17, 30, 47]):
        assert abs(value - nx.maximum_flow_value(g, (0, p), (5, 0))) <= TOL
    assert sum(stats.values()) == 5  # every value took exactly one path


def test_layered_edge_cases():
    caps = np.zeros((3, 4, 4))
    assert np.all(layered_max_flows(caps, range(4), 0) == 0)
    rng = np.random.default_rng(0)
    caps = rng.random((3, 4, 4))
    caps[0][:, 2] = 0  # token 2 has no arc out of layer 0: disconnected source
    caps[1][:, 3] = 0  # token 3 of layer 1 is a dead end
    got = layered_max_flows(caps, range(4), 0)
    assert got[2] == 0
    g = layered_nx_graph(caps)
    for p in range(4):
        assert abs(got[p] - nx.maximum_flow_value(g, (0, p), (3, 0))) <= TOL
    one = rng.random((1, 5, 5))  # a single block: the flow is the one arc's capacity
    assert np.array_equal(layered_max_flows(one, range(5), 3), one[0][3, :])
    assert layered_max_flows(np.full((4, 1, 1), 0.5), [0], 0)[0] == 0.5  # one token: a path
    with pytest.raises(MaxFlowError):
        LayeredFlows(np.ones((2, 3, 4)))
    with pytest.raises(MaxFlowError):
        LayeredFlows(-np.ones((2, 3, 3)))
    with pytest.raises(MaxFlowError):
        LayeredFlows(np.ones((2, 3, 3)), sink=3)
    with pytest.raises(MaxFlowError):
        LayeredFlows(np.ones((2, 3, 3))).value(7)


def test_flow_lies_between_the_best_path_and_the_trivial_cuts():
    rng = np.random.default_rng(11)
    for trial in range(80):
        L, N = int(rng.integers(1, 7)), int(rng.integers(1, 13))
        caps = random_caps(rng, (L, N, N), ["plain", "wide", "ties"][trial % 3])
        sink = int(rng.integers(N))
        got = layered_max_flows(caps, range(N), sink)
        for p in range(N):
            upper = min(caps[0][:, p].sum(), caps[-1][sink].sum())
            assert got[p] <= upper * (1 + 1e-12) + 1e-300
            assert got[p] >= widest_path(caps, p, sink) * (1 - 1e-12)


def test_results_do_not_depend_on_workers_or_splitting():
    rng = np.random.default_rng(4)
    caps = np.stack([attention_like(rng, L=4, N=24, temperature=t) for t in (0.5, 2.0, 4.0)])
    sources = np.arange(1, 24)
    serial = batched_layered_max_flows(caps, sources, 0, workers=1)
    for b in range(3):
        assert np.array_equal(serial[b], layered_max_flows(caps[b], sources, 0))
    assert np.array_equal(serial, batched_layered_max_flows(caps, sources, 0, workers=2))
    assert np.array_equal(serial[:1], batched_layered_max_flows(caps[:1], sources, 0, workers=3))
    # the path a source takes (which tiers, in which order) changes nothing either
    assert np.array_equal(serial[1], layered_max_flows(caps[1], sources, 0, tiers=()))
    assert np.array_equal(serial[1], layered_max_flows(caps[1], sources[::-1], 0)[::-1])


def test_a_pool_whose_worker_died_is_replaced_not_reused(monkeypatch):
    """A cached pool broken since its last use (a worker killed, out of memory) is replaced by a fresh one
    for the next solve, which then still runs in worker processes (the calling process's solver is broken
    here on purpose)."""
    import os
    import signal
    import time

    import compute.layers.flow_pool as flow_pool

    rng = np.random.default_rng(5)
    caps = np.stack([attention_like(rng, L=3, N=12, temperature=1.0) for _ in range(2)])
    sources = np.arange(1, 12)
    want = batched_layered_max_flows(caps, sources, 0, workers=1)
    pool = flow_pool._pool(1)
    assert np.array_equal(batched_layered_max_flows(caps, sources, 0, workers=1, in_process=False), want)
    for pid in list(pool._processes):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):  # the pool notices the death on its management thread
        if pool._broken:
            break
        time.sleep(0.05)
    assert pool._broken

    def not_here(*args, **kwargs):
        raise AssertionError("solved in the calling process")

    monkeypatch.setattr(flow_pool, "layered_max_flows", not_here)
    assert np.array_equal(batched_layered_max_flows(caps, sources, 0, workers=1, in_process=False), want)
    assert flow_pool._pool(1) is not pool


def test_pool_workers_run_at_a_lower_priority_than_the_job():
    """The max-flow workers compute in the background: they yield the CPU to the job's own stages."""
    import os

    import compute.layers.flow_pool as flow_pool
    from compute.children import BACKGROUND_NICENESS

    ours = os.nice(0)
    theirs = flow_pool._pool(1).submit(os.nice, 0).result(timeout=120)
    assert theirs == min(19, ours + BACKGROUND_NICENESS)
