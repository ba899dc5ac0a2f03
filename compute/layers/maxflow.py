"""Exact maximum flow with real capacities, fast on the layered graphs of attention flow.

The only compiled max-flow code among the project's dependencies is ``scipy.sparse.csgraph.maximum_flow``
(Dinic's algorithm), and it accepts integer capacities only. Everything here reduces the real-valued problem
to integer problems whose answers *prove* the real answer, instead of rounding and hoping:

**Cut certificate (exact).** Let ``K`` be the arcs leaving the source side of an s-t cut, with capacity
``C(K)``. Scale by ``S = 2**e`` (exact in floating point) and round the arcs of ``K`` *up* and every other arc
*down* to integers. Suppose the integer maximum flow equals ``sum(ceil(S * c_e) for e in K)``. Since a flow's
value is the net flow across any cut, every arc of ``K`` is then saturated and no flow comes back across the
cut, so in a decomposition of that flow into s-t paths (cycles dropped) each path crosses ``K`` exactly once.
Lowering the flow on the paths through each ``e`` in ``K`` by its rounding excess ``ceil(S c_e)/S - c_e``
gives a flow that respects every real capacity (the others were rounded down) and has value exactly
``C(K)``. No flow exceeds a cut, so the maximum flow *is* ``C(K)`` — exactly, with no rounding term. The
check is an integer equality, so it cannot pass by accident.

**Refinement (certified bracket).** When no certificate is at hand, keep a real flow ``f`` that is feasible
(a lower bound) and a cut (an upper bound). Each round solves the residual network, each arc capped at the
current gap ``D = upper - lower`` (no arc of an augmenting flow of value <= D carries more than D) and scaled
so that ``D`` maps to about ``2**30``; the integer flow, divided by the scale, is added to ``f`` (rounded down,
so ``f`` stays feasible) and the nodes still reachable in the integer residual network give a new cut, whose
real capacity is a new upper bound. Every arc leaving that cut has less than one integer unit of residual
capacity (or the round pushed about ``D`` through a capped arc and closed the gap), so the gap shrinks by a
factor of about ``|cut| / 2**30`` per round: two or three rounds reach ``rtol`` (1e-12 by default).

The layered special case (``layered_max_flows``) is what attention flow needs: one maximum flow per source
token through the same network. Only the source's arcs and the choice of cut differ between sources, so the
integer networks are built once and only their source and sink arcs are rewritten per source. The maximum
flow of such a network is nearly always the smaller of the two trivial cuts (all arcs out of the source, or
all arcs into the sink), so each source first tries that cut certificate on a sparse subnetwork (the largest
arcs per row and column, and every arc into the nodes that matter most to the sink). A certificate found on
a subnetwork is a certificate for the whole network (its flow is a flow of the whole network); if none is
found the full network is tried. When the trivial cut is not minimum (e.g. min head fusion), the integer flow
that failed leaves a cut - the nodes still reachable in its residual network - which is nearly always the
minimum one, and the same certificate is tried on it; the refinement is the last resort. Which path a source
takes changes the time, never the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

# Integer capacities stay below 2**30 so that flows, and sums of up to a few thousand rounded-up arcs, stay
# inside scipy's int32 arithmetic.
_BITS = 30
DEFAULT_RTOL = 1e-12
# Sparse subnetworks tried before the full network: (largest arcs into each node, largest arcs out of each
# node, number of nodes per layer, ranked by reverse rollout, that keep every incoming arc).
DEFAULT_TIERS: tuple[tuple[int, int, int], ...] = ((12, 12, 16), (16, 16, 32), (24, 24, 48))


class MaxFlowError(ValueError):
    """Bad input to a max-flow routine (negative or non-finite capacity, bad node index, source == sink)."""


def _scale(bound: float) -> float:
    """Largest power of two ``S`` with ``bound * S <= 2**30``."""
    if not bound > 0:
        raise MaxFlowError(f"scale of a non-positive bound {bound}")
    e = _BITS - math.ceil(math.log2(bound))
    while math.ldexp(bound, e) > 2.0 ** _BITS:  # log2 rounding at exact powers of two
        e -= 1
    return math.ldexp(1.0, max(min(e, 1000), -1000))


def _check_capacities(values: np.ndarray) -> None:
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0):
        raise MaxFlowError("capacities must be finite and non-negative")


# ----------------------------------------------------------------------------------------------------------
# General networks
# ----------------------------------------------------------------------------------------------------------

@dataclass
class MaxFlow:
    """Result of :func:`max_flow`: ``lower <= true maximum flow <= upper``; ``value`` is ``upper``.

    ``exact`` is True when ``lower == upper`` was proved (a cut certificate, or a refinement that closed the
    gap); otherwise ``upper - lower <= rtol * min(out(s), in(t))`` (2-3 refinement rounds; at most 40). ``upper``
    is the capacity of the cut whose source side is ``source_side``.
    """

    value: float
    lower: float
    upper: float
    exact: bool
    source_side: np.ndarray = field(repr=False)
    rounds: int = 0


class Network:
    """A directed network with real capacities, stored on the symmetric pattern of its arcs.

    Arc ``a`` goes from ``rows[a]`` to ``cols[a]`` with capacity ``cap[a]``; the arc in the opposite direction
    is always stored too (capacity 0 when the network has none), and flows are net flows (``f(v, u) = -f(u, v)``,
    as scipy returns them), which have the same maximum as the usual formulation.
    """

    def __init__(self, capacity):
        if sp.issparse(capacity):
            coo = sp.coo_array(capacity)
            n, m = coo.shape
            r, c, v = coo.row.astype(np.int64), coo.col.astype(np.int64), np.asarray(coo.data, dtype=np.float64)
        else:
            dense = np.asarray(capacity, dtype=np.float64)
            if dense.ndim != 2:
                raise MaxFlowError(f"capacity must be a square matrix, got shape {dense.shape}")
            n, m = dense.shape
            r, c = np.nonzero(dense)
            v = dense[r, c]
        if n != m:
            raise MaxFlowError(f"capacity must be a square matrix, got shape {(n, m)}")
        _check_capacities(v)
        keep = (r != c) & (v > 0)  # self-loops never carry flow between s and t
        r, c, v = r[keep], c[keep], v[keep]
        self.n = int(n)
        keys = np.unique(np.concatenate([r * n + c, c * n + r]))
        self.rows, self.cols = keys // n, keys % n
        self.cap = np.zeros(keys.size)
        np.add.at(self.cap, np.searchsorted(keys, r * n + c), v)  # duplicate arcs add up
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(self.rows, minlength=n))]).astype(np.int32)
        self.indices = self.cols.astype(np.int32)

    def _integer(self, data: np.ndarray) -> sp.csr_array:
        # copies: scipy may sort or prune a matrix in place, and these index arrays are ours
        return sp.csr_array((data.astype(np.int32), self.indices.copy(), self.indptr.copy()), shape=(self.n, self.n))

    def _solve(self, data: np.ndarray, s: int, t: int) -> tuple[int, np.ndarray]:
        """Integer max flow on this pattern with capacities ``data``: (value, net flow per arc)."""
        res = maximum_flow(self._integer(data), s, t)
        flow = res.flow
        if flow.nnz == self.indices.size and np.array_equal(flow.indptr, self.indptr) \
                and np.array_equal(flow.indices, self.indices):
            return int(res.flow_value), np.asarray(flow.data, dtype=np.int64)
        coo = sp.coo_array(flow)  # scipy changed the pattern: align by (row, col)
        out = np.zeros(self.cap.size, dtype=np.int64)
        keys = self.rows * self.n + self.cols
        np.add.at(out, np.searchsorted(keys, coo.row.astype(np.int64) * self.n + coo.col), coo.data)
        return int(res.flow_value), out

    def _reachable(self, residual: np.ndarray, s: int) -> np.ndarray:
        live = residual > 0
        graph = sp.csr_array((np.ones(int(live.sum()), dtype=np.int8), (self.rows[live], self.cols[live])),
                             shape=(self.n, self.n))
        side = np.zeros(self.n, dtype=bool)
        side[breadth_first_order(graph, s, directed=True, return_predecessors=False)] = True
        return side

    def cut_capacity(self, source_side: np.ndarray) -> float:
        crossing = source_side[self.rows] & ~source_side[self.cols]
        return float(self.cap[crossing].sum())

    def max_flow(self, s: int, t: int, rtol: float = DEFAULT_RTOL, try_certificate: bool = True) -> MaxFlow:
        n = self.n
        if not (0 <= s < n and 0 <= t < n):
            raise MaxFlowError(f"source {s} / sink {t} out of range for {n} nodes")
        if s == t:
            raise MaxFlowError("source and sink must differ")
        out_s = float(self.cap[self.rows == s].sum())
        in_t = float(self.cap[self.cols == t].sum())
        upper = min(out_s, in_t)
        side = np.zeros(n, dtype=bool)
        if upper == 0:
            side[s] = True
            if out_s > 0:  # everything but the sink
                side[:] = True
                side[t] = False
            return MaxFlow(0.0, 0.0, 0.0, True, side)
        cut = (self.rows == s) if out_s <= in_t else (self.cols == t)
        if out_s <= in_t:
            side[s] = True
        else:
            side[:] = True
            side[t] = False
        if try_certificate:
            scale = _scale(upper)
            data = np.floor(np.minimum(self.cap, upper) * scale)
            data[cut] = np.ceil(self.cap[cut] * scale)
            value, _ = self._solve(data, s, t)
            if value == int(data[cut].sum()):
                return MaxFlow(upper, upper, upper, True, side)
        return self._refine(s, t, upper, side, rtol)

    def _refine(self, s: int, t: int, upper: float, side: np.ndarray, rtol: float) -> MaxFlow:
        flow = np.zeros_like(self.cap)
        lower, atol = 0.0, rtol * upper
        into_t = self.cols == t
        rounds = 0
        while upper - lower > atol and rounds < 40:
            gap = upper - lower
            scale = _scale(gap)
            data = np.floor(np.minimum(np.maximum(self.cap - flow, 0.0), gap) * scale)
            _, g = self._solve(data, s, t)
            flow += g / scale
            rounds += 1
            lower = max(lower, float(flow[into_t].sum()))
            reach = self._reachable(data - g, s)
            bound = self.cut_capacity(reach)
            if bound < upper:
                upper, side = bound, reach
        return MaxFlow(upper, min(lower, upper), upper, lower >= upper, side, rounds)


def max_flow(capacity, source: int, sink: int, *, rtol: float = DEFAULT_RTOL) -> MaxFlow:
    """Maximum flow from ``source`` to ``sink``; ``capacity[u, v]`` is the capacity of arc u -> v.

    ``capacity``: a dense square array or a scipy sparse matrix of non-negative reals. See the module doc for
    why the result is exact (cut certificate) or bracketed to ``rtol`` (refinement).
    """
    return Network(capacity).max_flow(int(source), int(sink), rtol=rtol)


def max_flow_value(capacity, source: int, sink: int, *, rtol: float = DEFAULT_RTOL) -> float:
    """The value of a maximum flow (see :func:`max_flow`)."""
    return max_flow(capacity, source, sink, rtol=rtol).value


# ----------------------------------------------------------------------------------------------------------
# Layered networks (attention flow)
# ----------------------------------------------------------------------------------------------------------

def _top_mask(w: np.ndarray, k: int, axis: int) -> np.ndarray:
    mask = np.zeros(w.shape, dtype=bool)
    size = w.shape[axis]
    if k <= 0:
        return mask
    if k >= size:
        mask[:] = True
        return mask
    idx = np.argpartition(-w, k - 1, axis=axis)
    if axis == 1:
        mask[np.arange(w.shape[0])[:, None], idx[:, :k]] = True
    else:
        mask[idx[:k, :], np.arange(w.shape[1])[None, :]] = True
    return mask


@dataclass
class _Graph:
    matrix: sp.csr_array
    sink_pos: np.ndarray  # positions in matrix.data of the arcs (L-1, i) -> t
    nnz: int
    tails: np.ndarray  # tail node of each stored arc
    real: np.ndarray  # real capacity of each stored arc (source arcs: 0, set per source)


class LayeredFlows:
    """Maximum flows from tokens of layer 0 to one token of layer L in a layered network.

    ``caps``: ``[L, N, N]`` with ``caps[l][j, i]`` the capacity of the arc from token ``i`` of layer ``l`` to
    token ``j`` of layer ``l + 1`` (i.e. the row-stochastic attention convention: row = receiving token).
    Tokens of layer 0 other than the source have no incoming arcs and tokens of layer L other than the sink no
    outgoing ones, so neither can carry flow; the network solved per source is ``s -> layers 1..L-1 -> t``.
    """

    def __init__(self, caps, sink: int = 0, tiers=DEFAULT_TIERS, rtol: float = DEFAULT_RTOL):
        caps = np.asarray(caps, dtype=np.float64)
        if caps.ndim != 3 or caps.shape[1] != caps.shape[2] or caps.shape[0] < 1:
            raise MaxFlowError(f"caps must be [L, N, N] with L >= 1, got shape {caps.shape}")
        _check_capacities(caps.ravel())
        self.L, self.N = int(caps.shape[0]), int(caps.shape[1])
        if not 0 <= sink < self.N:
            raise MaxFlowError(f"sink token {sink} out of range for {self.N} tokens")
        self.caps, self.sink, self.rtol = caps, int(sink), float(rtol)
        self.tiers = [tuple(int(x) for x in t) for t in tiers]
        self.out = caps[0].sum(axis=0)  # capacity out of each source
        self.d = caps[-1][self.sink].copy()  # arcs (L-1, i) -> t
        self.into_t = float(self.d.sum())
        self.stats = {"zero": 0, "full": 0, "cut": 0, "refined": 0}
        self.stats.update({f"tier{i}": 0 for i in range(len(self.tiers))})
        self._tries = np.zeros(len(self.tiers), dtype=np.int64)
        self._wins = np.zeros(len(self.tiers), dtype=np.int64)
        self._graphs: dict = {}
        self._network: Network | None = None
        self._full_nnz: int | None = None
        if self.L >= 2 and self.into_t > 0:
            self.S = _scale(self.into_t)
            # No arc of a maximum flow carries more than the flow's value, which is at most into_t.
            self._q = np.floor(np.minimum(caps[1:-1], self.into_t) * self.S)
            self._d_floor, self._d_ceil = np.floor(self.d * self.S), np.ceil(self.d * self.S)

    # -- node numbering: s = 0, token j of layer l (1 <= l <= L-1) = 1 + (l-1) N + j, t = 1 + (L-1) N --------
    def _node(self, layer: int, token) -> np.ndarray:
        return 1 + (layer - 1) * self.N + np.asarray(token)

    @property
    def _t(self) -> int:
        return 1 + (self.L - 1) * self.N

    def _masks(self, spec) -> list[np.ndarray] | None:
        """Arcs kept per internal layer for a sparse tier, or None for the full network."""
        if spec is None:
            return None
        k_in, k_out, rows = spec
        # reverse rollout: how much of the sink each node of layer l reaches, proportionally to capacity
        weight = [None] * self.L
        weight[self.L - 1] = self.d
        for l in range(self.L - 2, 0, -1):
            a = self.caps[l]
            rs = a.sum(axis=1)
            weight[l] = a.T @ np.divide(weight[l + 1], rs, out=np.zeros_like(rs), where=rs > 0)
        masks = []
        for l in range(1, self.L - 1):  # caps[l]: layer l -> layer l + 1, rows are layer l + 1 tokens
            a = self.caps[l]
            m = _top_mask(a, k_in, axis=1) | _top_mask(a, k_out, axis=0)
            if rows > 0:
                m[np.argsort(-weight[l + 1], kind="stable")[:rows], :] = True
            np.fill_diagonal(m, True)
            masks.append(m)
        return masks

    def _graph(self, key) -> _Graph:
        if key in self._graphs:
            return self._graphs[key]
        N, L = self.N, self.L
        masks = self._masks(None if key == "full" else self.tiers[key])
        # rows in node order, each row's arcs in node order: CSR order without sorting
        ar = np.arange(N)
        r, c = [np.zeros(N, dtype=np.int64)], [self._node(1, ar)]
        v, w = [np.zeros(N)], [np.zeros(N)]  # integer and real capacities; source arcs are set per source
        for l in range(1, L - 1):
            q = self._q[l - 1].T  # [from, to]
            # the full network keeps every arc (a cut certificate must round up every arc of its cut, however
            # small); a subnetwork only needs arcs that can carry integer flow
            keep = self.caps[l].T > 0 if masks is None else (q > 0) & masks[l - 1].T
            src, dst = np.nonzero(keep)
            r.append(self._node(l, src))
            c.append(self._node(l + 1, dst))
            v.append(q[src, dst])
            w.append(self.caps[l][dst, src])
        r.append(self._node(L - 1, ar))
        c.append(np.full(N, self._t))
        v.append(np.zeros(N))
        w.append(self.d)
        r, c, v, w = (np.concatenate(z) for z in (r, c, v, w))
        n = self._t + 1
        indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))]).astype(np.int32)
        mat = sp.csr_array((v.astype(np.int32), c.astype(np.int32), indptr), shape=(n, n))
        g = _Graph(mat, indptr[self._node(L - 1, ar) + 1] - 1, int(v.size), r.astype(np.int32), w)
        assert np.all(mat.indices[g.sink_pos] == self._t) and np.all(mat.indices[:N] == self._node(1, np.arange(N)))
        self._graphs[key] = g
        return g

    def _certify(self, g: _Graph, src_data: np.ndarray, sink_data: np.ndarray, target: int):
        """Integer max flow with these source and sink arcs: (value == target, scipy's result)."""
        g.matrix.data[: self.N] = src_data
        g.matrix.data[g.sink_pos] = sink_data
        res = maximum_flow(g.matrix, 0, self._t)
        return int(res.flow_value) == target, res

    def _source_side(self, g: _Graph, res) -> np.ndarray:
        """Nodes reachable from s in the residual network of scipy's integer flow ``res`` on ``g``."""
        residual = sp.csr_array(g.matrix, dtype=np.int64) - res.flow  # reverse arcs: 0 - (-flow) = flow
        residual.data = (residual.data > 0).astype(np.int8)
        residual.eliminate_zeros()
        side = np.zeros(self._t + 1, dtype=bool)
        side[breadth_first_order(residual, 0, directed=True, return_predecessors=False)] = True
        return side

    def _cut_certificate(self, g: _Graph, side: np.ndarray, x: np.ndarray, upper: float) -> float | None:
        """The cut certificate (module doc) for the cut whose source side is ``side``: its capacity, or None."""
        real = g.real.copy()
        real[: self.N] = x
        cross = side[g.tails] & ~side[g.matrix.indices]
        capacity = float(real[cross].sum())
        if not capacity < upper:  # no better than the trivial cuts: it cannot be the minimum
            return None
        data = np.floor(np.minimum(real, self.into_t) * self.S)
        data[cross] = np.ceil(real[cross] * self.S)
        matrix = sp.csr_array((data.astype(np.int32), g.matrix.indices.copy(), g.matrix.indptr.copy()),
                              shape=g.matrix.shape)
        value = int(maximum_flow(matrix, 0, self._t).flow_value)
        return capacity if value == int(data[cross].sum()) else None

    def _full_network(self) -> Network:
        if self._network is None:
            N, L = self.N, self.L
            n = self._t + 1
            r = [np.zeros(N, dtype=np.int64)]
            c = [self._node(1, np.arange(N))]
            v = [np.ones(N)]  # placeholders so that every source arc is in the pattern
            for l in range(1, L - 1):
                dst, src = np.nonzero(self.caps[l])
                r.append(self._node(l, src))
                c.append(self._node(l + 1, dst))
                v.append(self.caps[l][dst, src])
            r.append(self._node(L - 1, np.arange(N)))
            c.append(np.full(N, self._t))
            v.append(self.d)
            r, c, v = np.concatenate(r), np.concatenate(c), np.concatenate(v)
            self._network = Network(sp.coo_array((v, (r, c)), shape=(n, n)))
            net = self._network
            self._src_arcs = np.searchsorted(net.rows * n + net.cols, self._node(1, np.arange(N)))
        return self._network

    def value(self, source: int) -> float:
        """Maximum flow from token ``source`` of layer 0 to the sink token of layer L."""
        N, L = self.N, self.L
        if not 0 <= source < N:
            raise MaxFlowError(f"source token {source} out of range for {N} tokens")
        x = self.caps[0][:, source]
        if L == 1:
            return float(x[self.sink])
        upper = min(float(self.out[source]), self.into_t)
        if upper == 0:
            self.stats["zero"] += 1
            return 0.0
        S = self.S
        if self.out[source] <= self.into_t:  # cut: the source's arcs
            src_data = np.ceil(x * S)
            sink_data = self._d_floor
            target = int(src_data.sum())
        else:  # cut: the sink's arcs
            src_data = np.floor(np.minimum(x, self.into_t) * S)
            sink_data = self._d_ceil
            target = int(self._d_ceil.sum())
        if self._full_nnz is None:
            self._full_nnz = int(np.count_nonzero(self.caps[1:-1])) + 2 * N
        for i, spec in enumerate(self.tiers):
            if self._tries[i] >= 8 and self._wins[i] < 0.4 * self._tries[i]:
                continue  # this tier rarely certifies on this network: not worth its time
            g = self._graph(i)
            if g.nnz > 0.6 * self._full_nnz:
                continue
            self._tries[i] += 1
            if self._certify(g, src_data, sink_data, target)[0]:
                self._wins[i] += 1
                self.stats[f"tier{i}"] += 1
                return upper
        g = self._graph("full")
        ok, res = self._certify(g, src_data, sink_data, target)
        if ok:
            self.stats["full"] += 1
            return upper
        # the trivial cut is not minimum; the cut this integer flow leaves is the natural second guess
        value = self._cut_certificate(g, self._source_side(g, res), x, upper)
        if value is not None:
            self.stats["cut"] += 1
            return value
        self.stats["refined"] += 1
        net = self._full_network()
        net.cap[self._src_arcs] = x
        return net.max_flow(0, self._t, rtol=self.rtol, try_certificate=False).value

    def values(self, sources) -> np.ndarray:
        return np.array([self.value(int(p)) for p in sources], dtype=np.float64)


def layered_max_flows(caps, sources, sink: int = 0, *, tiers=DEFAULT_TIERS, rtol: float = DEFAULT_RTOL,
                      stats: dict | None = None) -> np.ndarray:
    """Maximum flow from each ``sources`` token of layer 0 to token ``sink`` of layer L (see LayeredFlows)."""
    solver = LayeredFlows(caps, sink=sink, tiers=tiers, rtol=rtol)
    out = solver.values(sources)
    if stats is not None:
        for k, v in solver.stats.items():
            stats[k] = stats.get(k, 0) + v
    return out


__all__ = ["MaxFlow", "MaxFlowError", "Network", "LayeredFlows", "max_flow", "max_flow_value", "layered_max_flows",
           "DEFAULT_RTOL", "DEFAULT_TIERS"]
