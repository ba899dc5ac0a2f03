"""Deletion / insertion curves on a tiny model whose output depends only on known pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compute.metrics.faithfulness import (
    deletion_insertion, gaussian_blur, make_baseline, patch_ranks, probability_score, step_counts, value_score,
)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class PatchSum(torch.nn.Module):
    """Logits [z, 0] with z = sum_p c_p * (sum of the pixels of 2x2 patch p); a 4x4 image has 4 patches."""

    def __init__(self, weights=(1.0, 0.5, 0.0, 0.0)):
        super().__init__()
        self.c = torch.tensor(weights, dtype=torch.float64) / 12.0  # 3 channels x 4 pixels per patch
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        patches = x.reshape(x.shape[0], 3, 2, 2, 2, 2).sum(dim=(1, 3, 5))  # [N, 2, 2] per-patch sums
        z = (patches.reshape(x.shape[0], 4) * self.c).sum(-1)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def ones_image(n=1):
    return torch.ones(n, 3, 4, 4, dtype=torch.float64)


def test_deletion_and_insertion_curves_match_the_hand_computation():
    model = PatchSum()
    x = ones_image()
    heat = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])              # patches ranked 0, 1, 2, 3
    curves = deletion_insertion(model, x, heat, probability_score([[0]], 2), patch_size=2, steps=4)
    # removing patch 0 (c=1), then 1 (c=0.5), then the two that do not matter
    want_del = [sigmoid(1.5), sigmoid(0.5), 0.5, 0.5, 0.5]
    want_ins = [0.5, sigmoid(1.0), sigmoid(1.5), sigmoid(1.5), sigmoid(1.5)]
    np.testing.assert_allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curves.deletion[0], want_del, rtol=1e-6)
    np.testing.assert_allclose(curves.insertion[0], want_ins, rtol=1e-6)
    trap = lambda ys: 0.25 * (sum(ys) - (ys[0] + ys[-1]) / 2)  # noqa: E731
    assert curves.deletion_auc[0] == pytest.approx(trap(want_del))
    assert curves.insertion_auc[0] == pytest.approx(trap(want_ins))


def test_a_map_that_ranks_the_informative_patches_last_is_less_faithful():
    model = PatchSum()
    x = ones_image()
    good = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    bad = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    curves = deletion_insertion(model, x, {"good": good, "bad": bad}, probability_score([[0]], 2),
                                patch_size=2, steps=4)
    assert curves["good"].deletion_auc[0] < curves["bad"].deletion_auc[0]
    assert curves["good"].insertion_auc[0] > curves["bad"].insertion_auc[0]
    # bad: deletes the two useless patches first: the score holds until step 2
    np.testing.assert_allclose(curves["bad"].deletion[0], [sigmoid(1.5), sigmoid(1.5), sigmoid(1.5), sigmoid(1.0), 0.5])


def test_ties_break_by_patch_index_and_pixel_maps_are_pooled_to_patches():
    flat = torch.zeros(1, 2, 2)
    assert patch_ranks(flat, (2, 2)).tolist() == [[0, 1, 2, 3]]
    pixel = torch.tensor([[[0.0, 0, 9, 9], [0, 0, 9, 9], [1, 1, 0, 0], [1, 1, 0, 0]]])
    assert patch_ranks(pixel, (2, 2)).tolist() == [[2, 0, 1, 3]]


def test_batched_run_equals_one_image_at_a_time_and_shares_the_full_and_baseline_passes():
    torch.manual_seed(0)
    model = PatchSum(weights=(0.3, -0.2, 0.8, 0.1))
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    maps = {"a": torch.randn(3, 2, 2), "b": torch.randn(3, 4, 4)}
    score = probability_score([[0], [1], [0]], 2)
    together = deletion_insertion(model, x, maps, score, patch_size=2, steps=4, chunk=5)
    # forwards: full + baseline per image, then 2*(steps-1) per image and method
    assert sum(model.calls) == 3 * 2 + 3 * 2 * 2 * 3 and max(model.calls) <= 5
    for b in range(3):
        alone = deletion_insertion(model, x[b:b + 1], {k: v[b:b + 1] for k, v in maps.items()},
                                   probability_score([[[0], [1], [0]][b]], 2), patch_size=2, steps=4)
        for k in maps:
            np.testing.assert_allclose(together[k].deletion[b], alone[k].deletion[0], rtol=1e-6)
            np.testing.assert_allclose(together[k].insertion[b], alone[k].insertion[0], rtol=1e-6)


def test_blur_baseline_of_a_flat_image_is_the_image_so_nothing_changes():
    model = PatchSum()
    x = ones_image()
    assert torch.allclose(make_baseline(x, "blur"), x)
    curves = deletion_insertion(model, x, torch.rand(1, 2, 2), probability_score([[0]], 2), patch_size=2,
                                steps=4, baseline="blur")
    np.testing.assert_allclose(curves.deletion[0], sigmoid(1.5), rtol=1e-6)
    assert torch.equal(make_baseline(x, "zero"), torch.zeros_like(x))
    with pytest.raises(ValueError, match="baseline"):
        make_baseline(x, "noise")


def test_gaussian_blur_keeps_the_mean_and_smooths():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y = gaussian_blur(x, 2.0)
    assert y.shape == x.shape and y.std() < x.std()
    impulse = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    impulse[0, 0, 10, 10] = 1.0
    k = gaussian_blur(impulse, 1.5)
    assert k.sum().item() == pytest.approx(1.0) and torch.allclose(k, k.transpose(-1, -2))


def test_scores_for_class_sets_and_for_non_class_targets():
    out = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    owner = torch.tensor([0, 1])
    p = out.softmax(-1)
    got = probability_score([[1, 2], [0]], 3)(out, owner)
    torch.testing.assert_close(got, torch.stack([p[0, 1] + p[0, 2], p[1, 0]]))
    norm = value_score(lambda o: (o.norm(dim=-1), torch.full((o.shape[0],), -1)))(out, owner)
    torch.testing.assert_close(norm, out.norm(dim=-1))


def test_step_counts_round_to_whole_patches():
    assert step_counts(196, 10).tolist() == [0, 20, 39, 59, 78, 98, 118, 137, 157, 176, 196]
    with pytest.raises(ValueError):
        step_counts(4, 0)
