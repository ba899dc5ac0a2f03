"""attention_flow against a per-image, loop-by-loop transcription of the paper's graph, solved by networkx."""

from __future__ import annotations

import pytest
import torch

nx = pytest.importorskip("networkx")

from compute.capture import capture  # noqa: E402
from compute.methods import MethodError, get_method  # noqa: E402
from tests.methods.helpers import assert_matches_naive  # noqa: E402
from tests.naive import grid, naive_forward  # noqa: E402


def naive_attention_flow(model, image, fusion="mean", residual=0.5):
    """Nodes (layer, token), layers 0..L; arc (l-1, i) -> (l, j) with capacity Â_l[j, i],
    Â_l = rownorm((1 - w)·fuse_h(A_l) + w·I); value of patch p = max flow (0, p) -> (L, class token)."""
    out = naive_forward(model, image)
    attn = [a.detach() for a in out["attn"]]
    L, (heads, n, _) = len(attn), attn[0].shape
    g = nx.DiGraph()
    for l, a in enumerate(attn, start=1):
        for j in range(n):
            row = []
            for i in range(n):
                per_head = [float(a[h, j, i]) for h in range(heads)]
                fused = {"mean": sum(per_head) / heads, "max": max(per_head), "min": min(per_head)}[fusion]
                row.append((1 - residual) * fused + (residual if i == j else 0.0))
            total = sum(row)
            for i in range(n):
                g.add_edge((l - 1, i), (l, j), capacity=row[i] / total)
    values = [nx.maximum_flow_value(g, (0, p), (L, 0)) for p in range(1, n)]
    return grid(torch.tensor(values, dtype=torch.float64), model)


CASES = [
    ("attention_flow", {}),
    ("attention_flow(head_fusion=max,residual=0.3)", {"fusion": "max", "residual": 0.3}),
    ("attention_flow(head_fusion=min)", {"fusion": "min"}),
]


@pytest.mark.parametrize("spec,kw", CASES, ids=[c[0] for c in CASES])
def test_matches_paper_graph_solved_by_networkx(spec, kw, tiny_vit, images):
    method = get_method(spec)
    maps = method(capture(tiny_vit, images, method.requires))
    for i in range(images.shape[0]):
        assert_matches_naive(maps[i], naive_attention_flow(tiny_vit, images[i], **kw), what=f"image {i}")


def test_results_do_not_depend_on_workers(tiny_vit, images):
    cap = capture(tiny_vit, images, {"attn"})
    serial = get_method("attention_flow(workers=1)")(cap)
    assert torch.equal(serial, get_method("attention_flow(workers=2)")(cap))
    assert torch.equal(serial, get_method("attention_flow")(cap))


def test_the_deferred_part_solves_in_worker_processes_even_when_small(tiny_vit, images, monkeypatch):
    """The batch job finishes ``deferred`` on a background thread: solving there in this process would hold
    the interpreter lock against the main thread. A batch small enough for one worker still goes to a
    process (whose solver is not the one broken here), and gives the maps a direct call gives."""
    import compute.layers.flow_pool as flow_pool

    cap = capture(tiny_vit, images, {"attn"})
    method = get_method("attention_flow")
    direct = method(cap)

    def not_here(*args, **kwargs):
        raise AssertionError("solved in the calling process")

    monkeypatch.setattr(flow_pool, "layered_max_flows", not_here)
    assert torch.equal(method.deferred(cap)().to(direct.dtype), direct)
    with pytest.raises(AssertionError, match="calling process"):
        method(cap)  # a direct call of a small batch solves here


def test_flow_is_bounded_by_the_trivial_cuts(tiny_vit, images):
    """Flow out of a patch <= its arcs out of layer 0; into the class token <= 1 (a normalised row)."""
    cap = capture(tiny_vit, images, {"attn"})
    maps = get_method("attention_flow")(cap)
    a = cap.attn[0].mean(1)
    first = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
    out_capacity = cap.to_grid(first.sum(dim=1))  # column sums: arcs leaving each token of layer 0
    assert torch.all(maps <= torch.minimum(out_capacity, torch.ones_like(out_capacity)) + 1e-12)
    assert torch.all(maps > 0)


def test_residual_weight_extremes(tiny_vit, images):
    cap = capture(tiny_vit, images[:2], {"attn"})
    assert torch.all(get_method("attention_flow(residual=1)")(cap) == 0)  # identity only: no path to the class token
    pure = get_method("attention_flow(residual=0)")(cap)  # attention only
    assert torch.isfinite(pure).all() and torch.all(pure > 0)


def test_float32_attention_gives_float32_maps(tiny_vit, images):
    cap = capture(tiny_vit, images[:1], {"attn"})
    cap.attn = [a.float() for a in cap.attn]
    maps = get_method("attention_flow")(cap)
    assert maps.dtype == torch.float32 and maps.shape == (1, 4, 4)


def test_workers_is_not_part_of_the_stored_name():
    assert get_method("attention_flow(workers=3)").key == "attention_flow"
    assert get_method("attention_flow(residual=0.5)").key == "attention_flow"
    assert get_method("attention_flow(head_fusion=max,workers=2)").key == "attention_flow(head_fusion=max)"
    assert get_method("attention_flow(residual=0.25)").key == "attention_flow(residual=0.25)"


def test_bad_options_are_refused():
    with pytest.raises(MethodError, match="head_fusion"):
        get_method("attention_flow(head_fusion=median)")
    with pytest.raises(MethodError, match="residual"):
        get_method("attention_flow(residual=1.5)")
    with pytest.raises(MethodError, match="residual"):
        get_method("attention_flow(residual=half)")
    with pytest.raises(MethodError, match="workers"):
        get_method("attention_flow(workers=-1)")
    with pytest.raises(MethodError, match="no option"):
        get_method("attention_flow(depth=3)")
