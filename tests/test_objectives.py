"""The semi-supervised objectives on hand-made logits: masks and losses checked by hand."""

from __future__ import annotations

import dataclasses
import math

import torch

from defectssft.training import objectives as obj
from defectssft.training.config import SSLConfig


def test_supervised_loss_is_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 1])
    expected = (-math.log(math.e**2 / (math.e**2 + 1)) + math.log(2)) / 2
    assert abs(obj.supervised_loss(logits, targets).item() - expected) < 1e-6


def test_fixmatch_masks_low_confidence_and_averages_over_all_samples():
    probs_weak = torch.tensor([[0.97, 0.03], [0.6, 0.4], [0.01, 0.99]])
    strong = torch.tensor([[0.0, 0.0], [5.0, -5.0], [0.0, 0.0]])
    loss, mask = obj.fixmatch_loss(probs_weak, strong, threshold=0.95)
    assert mask.tolist() == [True, False, True]
    # kept samples: uniform logits -> CE = log 2 each; averaged over all 3 (masked counts as 0)
    assert abs(loss.item() - 2 * math.log(2) / 3) < 1e-6


def test_fixmatch_no_sample_confident_gives_zero_loss():
    probs_weak = torch.full((4, 3), 1 / 3)
    loss, mask = obj.fixmatch_loss(probs_weak, torch.randn(4, 3), threshold=0.5)
    assert not mask.any() and loss.item() == 0.0


def test_fixmatch_gradient_flows_only_through_strong_logits():
    weak = torch.tensor([[0.99, 0.01]], requires_grad=True)
    strong = torch.zeros(1, 2, requires_grad=True)
    loss, _ = obj.fixmatch_loss(weak, strong, 0.5)
    loss.backward()
    assert weak.grad is None
    assert strong.grad is not None and strong.grad[0, 0] < 0 < strong.grad[0, 1]


def test_freematch_thresholds_start_low_and_are_class_wise():
    state = obj.AdaptiveThresholdState.initial(4)
    assert torch.allclose(state.thresholds(), torch.full((4,), 0.25))
    state = obj.AdaptiveThresholdState(tau=torch.tensor(0.8), p=torch.tensor([0.6, 0.3, 0.1]))
    assert torch.allclose(state.thresholds(), torch.tensor([0.8, 0.4, 0.8 / 6]))
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.5, 0.2]])
    loss, mask = obj.freematch_loss(probs, torch.zeros(3, 3), state)
    # class 0 needs 0.8 (0.7 fails); class 1 needs 0.4 (0.5 passes twice)
    assert mask.tolist() == [False, True, True]
    assert abs(loss.item() - 2 * math.log(3) / 3) < 1e-6


def test_adaptive_state_update_is_an_ema_of_batch_statistics():
    state = obj.AdaptiveThresholdState.initial(2)
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    new = obj.update_adaptive_state(state, probs, momentum=0.5)
    assert abs(new.tau.item() - (0.5 * 0.5 + 0.5 * 0.8)) < 1e-6
    assert torch.allclose(new.p, torch.tensor([0.5 * 0.5 + 0.5 * 0.8, 0.5 * 0.5 + 0.5 * 0.2]))
    assert state.tau.item() == 0.5  # the input state is not modified
    # pseudo-label histogram: both argmax 0 -> [1, 0]; EMA from uniform
    assert torch.allclose(new.h, torch.tensor([0.5 * 0.5 + 0.5 * 1.0, 0.5 * 0.5]))


def test_adaptive_state_from_an_older_checkpoint_gets_a_uniform_histogram():
    state = obj.AdaptiveThresholdState.from_state_dict(
        {"tau": torch.tensor(0.7), "p": torch.tensor([0.2, 0.8])}
    )
    assert torch.allclose(state.h, torch.tensor([0.5, 0.5]))
    again = obj.AdaptiveThresholdState.from_state_dict(state.state_dict())
    assert torch.equal(again.h, state.h)


def test_fairness_loss_by_hand():
    # running estimates: p = [0.5, 0.5], h = [0.5, 0.5] -> target [0.5, 0.5]
    state = obj.AdaptiveThresholdState(
        tau=torch.tensor(0.9), p=torch.tensor([0.5, 0.5]), h=torch.tensor([0.5, 0.5])
    )
    strong = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    # masked samples: probs [0.75, 0.25] twice -> mean [0.75, 0.25], histogram [1, 0]
    # mean / hist with the empty class contributing 0 -> [1, 0]; loss = 0.5 log 1 + 0.5 log 1e-12
    loss = obj.fairness_loss(strong, mask, state)
    assert abs(loss.item() - 0.5 * math.log(1e-12)) < 1e-4
    # two classes predicted once each: probs [0.75, 0.25] and [0.25, 0.75] -> mean [.5, .5],
    # hist [.5, .5] -> normalised [.5, .5]; loss = 2 * 0.5 * log 0.5
    strong = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    loss = obj.fairness_loss(strong, torch.tensor([True, True]), state)
    assert abs(loss.item() - math.log(0.5)) < 1e-6


def test_fairness_loss_is_zero_without_masked_samples_and_ignores_unmasked_ones():
    state = obj.AdaptiveThresholdState.initial(3)
    logits = torch.zeros(2, 3, requires_grad=True)
    assert obj.fairness_loss(logits, torch.tensor([False, False]), state).item() == 0.0
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 3.0]], requires_grad=True)
    loss = obj.fairness_loss(logits, torch.tensor([True, True, False]), state)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[:2].abs().sum() > 0 and logits.grad[2].abs().sum() == 0


def test_distribution_alignment_moves_pseudo_labels_off_the_majority_class():
    probs = torch.tensor([[0.6, 0.4], [0.55, 0.45]])
    running = torch.tensor([0.9, 0.1])  # the model predicts class 0 for 90 % of the stream
    target = torch.tensor([0.5, 0.5])
    aligned = obj.distribution_alignment(probs, running, target)
    assert torch.allclose(aligned.sum(1), torch.ones(2))
    # by hand: 0.6/0.9 : 0.4/0.1 -> 0.1429 : 0.8571
    assert abs(aligned[0, 1].item() - (0.4 / 0.1) / (0.6 / 0.9 + 0.4 / 0.1)) < 1e-6
    assert (aligned.argmax(1) == 1).all()


def test_distribution_alignment_is_identity_when_model_matches_target():
    probs = torch.softmax(torch.randn(5, 3), 1)
    same = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(obj.distribution_alignment(probs, same, same), probs, atol=1e-6)


def test_running_mean_update_and_total_loss():
    rm = obj.update_running_mean(
        torch.tensor([0.5, 0.5]), torch.tensor([[1.0, 0.0]]), momentum=0.75
    )
    assert torch.allclose(rm, torch.tensor([0.625, 0.375]))
    assert obj.total_loss(torch.tensor(1.0), torch.tensor(2.0), 0.5).item() == 2.0


def test_unlabeled_loss_step_matches_the_objectives_and_carries_its_state():
    torch.manual_seed(0)
    weak, strong = torch.randn(8, 3) * 3, torch.randn(8, 3)
    ssl = SSLConfig(dist_align=False, ema_momentum=0.9, threshold=0.6, fairness=0.0)
    state = obj.UnlabeledState.initial(3)
    target = torch.full((3,), 1 / 3)
    step = obj.unlabeled_loss("fixmatch", weak, strong, state, ssl, target)
    loss, mask = obj.fixmatch_loss(weak.softmax(1), strong, 0.6)
    assert torch.allclose(step.loss, loss) and torch.equal(step.mask, mask)
    assert step.state is not state and step.diagnostics == {}
    step = obj.unlabeled_loss("freematch", weak, strong, state, ssl, target)
    assert set(step.diagnostics) == {"tau"}
    assert float(step.state.adaptive.tau) != float(state.adaptive.tau)  # the state moved on
    aligned = obj.unlabeled_loss(
        "fixmatch", weak, strong, state, dataclasses.replace(ssl, dist_align=True), target
    )
    assert not torch.equal(aligned.state.da_mean, state.da_mean)
