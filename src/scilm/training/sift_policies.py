"""The sifting policies of ``scilm train`` (``sift_policy``): one class each, one registry.

A policy says where samples are chosen and by which loss; :mod:`scilm.training.sifting` asks it,
never the policy's name. Light imports only: the CLI reads :data:`SIFT_POLICIES` at start-up.

* ``relative`` (the original smart sifting rule, Amazon SageMaker ``smart_sifting``): the train
  DataLoader is wrapped and each raw batch is scored by an extra forward pass; a sample is kept
  with the probability of its loss's percentile in a recent history.
* ``random``: the same loader, scored by random numbers: drops at the same expected rate, blind.
* ``reuse`` (InfoBatch-like, Qin et al. 2024): no scoring pass; each sample's last training loss
  decides in the *sampler* whether the next epoch loads it; kept losses are weighted by 1/p.
* ``reuse-random``: the same sampler, blind to the losses (its control).

Adding a policy is one class here plus one entry in :data:`SIFT_POLICIES`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SiftPolicy:
    """How a sifted run chooses its samples.

    Attributes:
        name: the ``sift_policy`` value.
        in_loader: samples are chosen in the DataLoader from scored raw batches (``relative``,
            ``random``); otherwise in the sampler from the previous epoch's losses (``reuse``).
        resumable: a run can be resumed from a checkpoint and run in several processes.
    """

    name: ClassVar[str] = ""
    in_loader: ClassVar[bool] = True
    resumable: ClassVar[bool] = True

    def scoring_loss(self, recipe_loss: Any, seed: int) -> Any:
        """The loss that scores raw batches in the loader (``in_loader`` policies): a
        :class:`scilm.sifting.loss.Loss` giving ``(B,)`` per-sample losses."""
        return recipe_loss

    def reuse_sifter(self, n_samples: int, beta: float, seed: int) -> Any | None:
        """The sampler-side selector (a :class:`scilm.sifting.ReuseLossSifter`) of sampler policies,
        over ``n_samples`` training samples; ``None`` for loader policies."""
        return None


class Relative(SiftPolicy):
    """Keep by the loss's percentile among recent losses (an extra forward pass per raw batch)."""

    name = "relative"


class Random(Relative):
    """The blind control of ``relative``: the same keep rate, decided by random scores."""

    name = "random"

    def scoring_loss(self, recipe_loss: Any, seed: int) -> Any:
        from scilm.sifting import RandomLoss

        return RandomLoss(seed)


class Reuse(SiftPolicy):
    """Skip well-learned samples in the next epoch by their last training loss; no scoring pass.

    Its epochs change length with what was kept, so it runs in one process and cannot resume.
    """

    name = "reuse"
    in_loader = False
    resumable = False
    blind: ClassVar[bool] = False

    def reuse_sifter(self, n_samples: int, beta: float, seed: int) -> Any:
        from scilm.sifting import ReuseLossSifter

        return ReuseLossSifter(n_samples, beta, seed=seed, blind=self.blind)


class ReuseRandom(Reuse):
    """The blind control of ``reuse``: the same keep rate, decided at random."""

    name = "reuse-random"
    blind = True


SIFT_POLICIES: dict[str, SiftPolicy] = {policy.name: policy for policy in (Relative(), Reuse(), Random(), ReuseRandom())}


def sift_policy(value: str) -> SiftPolicy:
    """The policy named ``value``.

    Raises:
        KeyError: ``value`` names no policy (settings validation reports it first, naming the setting).
    """
    return SIFT_POLICIES[value]
