"""Warm-up: the adversarial terms train the right network each, in one backward pass."""
from __future__ import annotations

import torch

from proda.adapt.warmup import SOURCE_LABEL, TARGET_LABEL, adversarial_loss
from proda.models.discriminator import FCDiscriminator


def test_adversarial_loss_values():
    d = torch.tensor([[[[0.5, 1.0]]]])
    assert torch.isclose(adversarial_loss(d, SOURCE_LABEL, "ls"), torch.tensor((0.25 + 1.0) / 2))
    assert torch.isclose(adversarial_loss(d, TARGET_LABEL, "ls"), torch.tensor((0.25 + 0.0) / 2))
    # BCE with logits against 1: mean(log(1 + exp(-x)))
    expected = (torch.log1p(torch.exp(torch.tensor(-0.5))) + torch.log1p(torch.exp(torch.tensor(-1.0)))) / 2
    assert torch.isclose(adversarial_loss(d, TARGET_LABEL, "vanilla"), expected)


def test_generator_term_reaches_the_generator_only_and_disc_term_the_disc_only():
    from torch.func import functional_call

    torch.manual_seed(0)
    disc = FCDiscriminator(3, ndf=4)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    prob = logits.softmax(1)
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    fool = adversarial_loss(functional_call(disc, frozen, (prob,)), SOURCE_LABEL, "ls")
    fool.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())

    logits.grad = None
    d_loss = adversarial_loss(disc(prob.detach()), TARGET_LABEL, "ls")
    d_loss.backward()
    assert logits.grad is None
    assert all(p.grad is not None for p in disc.parameters())
