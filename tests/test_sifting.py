"""scilm.sifting on synthetic streams whose per-sample loss is known: the loss of sample x is x[0]."""

from __future__ import annotations

import logging

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scilm.errors import ScilmError
from scilm.sifting import (
    BatchTransform,
    Loss,
    LossConfig,
    LossHistory,
    RelativeProbabilisticSiftConfig,
    ReuseLossSifter,
    ReuseSampler,
    Seq2SeqLoss,
    SequenceClassificationLoss,
    SiftingBaseConfig,
    SiftingDataLoader,
    SiftingDataloader,
    check_cost,
    concat,
    percentile_in,
    push_losses,
    reuse_keep_probability,
    select_by_loss,
)


class KnownLossModel(torch.nn.Module):
    """Returns its input's first column; a Dropout inside lets the tests watch train/eval modes."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.drop = torch.nn.Dropout(0.5)
        self.modes_seen: list[bool] = []

    def forward(self, x):
        self.modes_seen.append(self.training)
        return x[:, 0] * self.scale


class FirstColumnLoss(Loss):
    def loss(self, model, transformed_batch, original_batch=None):
        return model(transformed_batch[0])


def config(beta=1.0, delay=0, history=500, repeat=False):
    return RelativeProbabilisticSiftConfig(
        beta_value=beta, loss_history_length=history,
        loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=delay,
                                                                        repeat_delay_per_epoch=repeat)))


def stream(n=2000, batch=50, seed=12345):  # data seed unlike the sifters' seeds, so draws and losses are independent
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g)
    ids = torch.arange(n)
    return DataLoader(TensorDataset(x, ids), batch_size=batch, shuffle=False)


def sifter(beta=1.0, delay=0, seed=0, n=2000, batch=50, **kw):
    return SiftingDataloader(sift_config=config(beta, delay), orig_dataloader=stream(n, batch),
                             loss_impl=FirstColumnLoss(), model=KnownLossModel(), seed=seed, **kw)


def kept_ids(batches):
    return torch.cat([b[1] for b in batches]).tolist()


# -- config ---------------------------------------------------------------------------------------
def test_original_keywords_and_dicts():
    cfg = RelativeProbabilisticSiftConfig(beta_value=3, loss_history_length=500,
                                          loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=10)))
    assert cfg.base.sift_delay == 10 and cfg.expected_keep == 0.25
    cfg = RelativeProbabilisticSiftConfig(beta_value=0.5, loss_based_sift_config={"sift_config": {"sift_delay": 3}})
    assert cfg.base.sift_delay == 3


@pytest.mark.parametrize("kwargs, field", [({"beta_value": 0}, "beta_value"), ({"beta_value": float("nan")}, "beta_value"),
                                           ({"loss_history_length": 0}, "loss_history_length")])
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ScilmError, match=field):
        RelativeProbabilisticSiftConfig(**kwargs)
    with pytest.raises(ScilmError, match="sift_delay"):
        SiftingBaseConfig(sift_delay=-1)


# -- pure selection functions ---------------------------------------------------------------------
def test_ring_buffer_keeps_the_newest():
    h = LossHistory.empty(4)
    push_losses(h, torch.tensor([1.0, 2.0, 3.0]))
    push_losses(h, torch.tensor([4.0, 5.0]))
    assert sorted(h.recent().tolist()) == [2.0, 3.0, 4.0, 5.0]
    push_losses(h, torch.arange(10.0))
    assert sorted(h.recent().tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_percentile_mid_rank():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert percentile_in(torch.tensor([0.0, 2.0, 9.0]), ref).tolist() == [0.0, 0.375, 1.0]


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_select_by_loss_keeps_one_over_one_plus_beta(beta):
    g, h = torch.Generator().manual_seed(1), LossHistory.empty(500)
    losses = torch.rand(40_000, generator=torch.Generator().manual_seed(2))
    kept = torch.cat([select_by_loss(chunk, h, beta, g) for chunk in losses.split(100)])
    assert abs(kept.float().mean().item() - 1 / (1 + beta)) < 0.03


def test_high_losses_are_kept_more():
    g, h = torch.Generator().manual_seed(0), LossHistory.empty(1000)
    losses = torch.rand(20_000, generator=torch.Generator().manual_seed(3))
    kept = torch.cat([select_by_loss(c, h, 2.0, g) for c in losses.split(100)])
    assert losses[kept].mean() > losses[~kept].mean() + 0.2


# -- the dataloader -------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_realised_keep_rate(beta):
    loader = sifter(beta, n=20_000, batch=100)
    batches = list(loader)
    stats = loader.stats()
    assert stats["samples_seen"] == 20_000
    assert abs(stats["keep_rate"] - 1 / (1 + beta)) < 0.03
    assert sum(len(b[0]) for b in batches) == stats["samples_kept"]
    assert all(len(b[0]) == 100 for b in batches[:-1]) and 0 < len(batches[-1][0]) <= 100


def test_sift_delay_passes_everything_first():
    loader = sifter(beta=3.0, delay=5)
    batches = list(loader)
    assert kept_ids(batches[:5]) == list(range(250))  # the first 5 raw batches, unsifted and in order
    assert loader.stats()["samples_passed"] == 250 and loader.stats()["samples_seen"] == 1750


def test_repeat_delay_per_epoch():
    loader = SiftingDataloader(config(3.0, delay=2, repeat=True), stream(500, 50), FirstColumnLoss(), KnownLossModel())
    for _ in range(2):
        assert kept_ids(list(loader)[:2]) == list(range(100))


def test_same_seed_same_selection_other_seed_differs():
    assert kept_ids(sifter(seed=7)) == kept_ids(sifter(seed=7))
    assert kept_ids(sifter(seed=7)) != kept_ids(sifter(seed=8))


def test_resume_from_state_dict_continues_identically():
    full = kept_ids(sifter(seed=3, delay=2))
    first = sifter(seed=3, delay=2)
    it, head = iter(first), []
    for _ in range(7):
        head.append(next(it))
    state = first.state_dict()
    resumed = sifter(seed=3, delay=2)
    resumed.load_state_dict(state)
    assert kept_ids(head) + kept_ids(resumed) == full
    assert resumed.stats()["samples_seen"] == first.stats()["samples_seen"] + (
        2000 - first._counts["raw_in_epoch"] * 50)


def test_resume_saved_after_an_epochs_last_batch_goes_on_with_the_next_epoch():
    """A checkpoint taken right after an epoch's final batch: the resumed pass must not come back empty
    (a trainer reads an empty pass as "no data" and stops)."""
    reference = sifter(seed=5)
    epochs = [list(reference), list(reference)]
    two_epochs = [kept_ids(batches) for batches in epochs]
    first = sifter(seed=5)
    head = list(itertools.islice(iter(first), len(epochs[0])))  # the whole epoch; its generator not yet exhausted
    assert first.stats()["epochs"] == 0
    assert kept_ids(head) == two_epochs[0]
    resumed = sifter(seed=5)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert rest and kept_ids(rest) == two_epochs[1]


def test_model_modes_restored_and_scoring_in_eval():
    model = KnownLossModel()
    model.train()
    model.drop.eval()  # a frozen submodule must stay frozen
    loader = SiftingDataloader(config(), stream(200, 50), FirstColumnLoss(), model)
    for _ in loader:
        assert model.training and not model.drop.training
    assert model.modes_seen and not any(model.modes_seen)


def test_len_raises_type_error():
    loader = sifter()
    with pytest.raises(TypeError):
        len(loader)
    assert SiftingDataLoader is SiftingDataloader


def test_loss_shape_checked():
    bad = SiftingDataloader(config(), stream(100, 10), lambda m, b, o=None: b[0].sum(), KnownLossModel())
    with pytest.raises(ScilmError, match="one loss per sample"):
        next(iter(bad))


def test_cost_check_disables_when_scoring_is_too_slow():
    class SlowLoss(FirstColumnLoss):
        def loss(self, model, transformed_batch, original_batch=None):
            import time
            time.sleep(0.003)
            return super().loss(model, transformed_batch)

    loader = SiftingDataloader(config(0.5), stream(1000, 20), SlowLoss(), KnownLossModel(),
                               on_no_gain="disable", cost_check_steps=3)
    list(loader)
    assert loader.cost_verdict is not None and not loader.cost_verdict.pays
    assert loader.disabled and loader.stats()["samples_passed"] > 0


def test_check_cost_rule():
    assert check_cost(0.1, 1.0, 0.5).pays  # 0.5 < 1 - 0.1
    verdict = check_cost(0.6, 1.0, 0.5)
    assert not verdict.pays and "does not pay" in verdict.message
    with pytest.raises(ScilmError):
        check_cost(0.1, 0.0, 0.5)


def test_logs_counters(caplog):
    with caplog.at_level(logging.INFO, logger="scilm.sifting"):
        list(sifter(log_every=5))
    assert "kept" in caplog.text and "scoring" in caplog.text


# -- batch forms ----------------------------------------------------------------------------------
def test_concat_repads_dicts_per_key():
    a = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
         "labels": torch.ones(2, 3, dtype=torch.long)}
    b = {k: torch.full((1, 5), 2, dtype=torch.long) for k in a}
    joined = concat([a, b], pad_values={"input_ids": 1})
    assert joined["input_ids"].shape == (3, 5)
    assert joined["input_ids"][0].tolist() == [1, 1, 1, 1, 1]  # pad id 1
    assert joined["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    assert joined["labels"][1].tolist() == [1, 1, 1, -100, -100]
    assert joined["labels"][2].tolist() == [2] * 5


class VariableLengthDicts:
    """Hugging Face style dict batches padded to each batch's own length; loss = first token id."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for i in range(20):
            length = 3 + i % 4
            ids = torch.randint(5, 30, (8, length), generator=g)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_dict_batches_with_different_lengths():
    class FirstToken(Loss):
        def loss(self, model, transformed_batch, original_batch=None):
            return transformed_batch["input_ids"][:, 0].float()

    loader = SiftingDataloader(config(1.0), VariableLengthDicts(), FirstToken(), KnownLossModel(), pad_values={"input_ids": 1})
    batches = list(loader)
    assert all(b["input_ids"].shape[0] == 8 for b in batches[:-1])
    for b in batches:
        pad = b["attention_mask"] == 0
        assert (b["input_ids"][pad] == 1).all() and (b["labels"][pad] == -100).all()
        assert (b["input_ids"][~pad] >= 5).all() and b["input_ids"].shape == b["labels"].shape
    assert sum(b["attention_mask"].sum().item() for b in batches) > 0


def test_custom_batch_objects_via_transforms():
    class Pair:
        def __init__(self, x, ids):
            self.x, self.ids = x, ids

    class PairTransform(BatchTransform):
        def transform(self, batch):
            return (batch.x, batch.ids)

        def reverse_transform(self, batch):
            return Pair(*batch)

    raw = [Pair(x, ids) for x, ids in stream(400, 40)]
    loader = SiftingDataloader(config(1.0), raw, FirstColumnLoss(), KnownLossModel(), batch_transforms=PairTransform())
    out = list(loader)
    assert all(isinstance(b, Pair) for b in out) and len(out[0].ids) == 40


def test_builtin_losses_per_sample():
    class Logits(torch.nn.Module):  # a "language model" whose logits are an embedding of the input ids
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 10)

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": self.emb(input_ids)})

    model = Logits()
    ids = torch.randint(0, 10, (3, 5))
    labels = ids.clone()
    labels[0, 2:] = -100
    causal = Seq2SeqLoss(causal=True).loss(model, {"input_ids": ids, "labels": labels})
    assert causal.shape == (3,)
    ref = torch.nn.functional.cross_entropy(model.emb(ids)[0, :1], labels[0, 1:2])
    assert torch.allclose(causal[0], ref)
    cls = SequenceClassificationLoss().loss(lambda **kw: type("O", (), {"logits": torch.zeros(3, 2)}),
                                            {"input_ids": ids, "labels": torch.tensor([0, 1, 1])})
    assert torch.allclose(cls, torch.full((3,), 0.6931), atol=1e-4)


# -- the reuse policy -----------------------------------------------------------------------------
def test_reuse_weights_are_unbiased():
    n = 40_000
    sifter_ = ReuseLossSifter(n, beta_value=1.0, seed=0)
    losses = torch.rand(n, generator=torch.Generator().manual_seed(1)) * 3
    sifter_.record(torch.arange(n), losses)
    kept = sifter_.plan_epoch()
    indicator = torch.zeros(n)
    indicator[kept] = 1
    assert abs((sifter_.weights * indicator).mean().item() - 1.0) < 0.05
    weighted = sifter_.record(kept, losses[kept]) * kept.numel() / n  # epoch mean of rescaled losses
    assert abs(weighted.item() - losses.mean().item()) < 0.05 * losses.mean().item()
    assert 0.45 < kept.numel() / n < 0.56


def test_blind_reuse_control_keeps_at_the_same_rate_ignoring_losses():
    n = 20_000
    losses = torch.arange(n, dtype=torch.float32)  # sample i's loss is i: a loss-driven plan keeps the top
    real, blind = ReuseLossSifter(n, 2.0, seed=0), ReuseLossSifter(n, 2.0, seed=0, blind=True)
    for sifter_ in (real, blind):
        sifter_.record(torch.arange(n), losses)
    kept_real, kept_blind = real.plan_epoch(), blind.plan_epoch()
    assert abs(kept_real.numel() - kept_blind.numel()) < 0.03 * n  # same expected keep rate
    assert kept_real.float().mean() > 0.7 * n  # high losses preferred ...
    assert abs(kept_blind.float().mean().item() - n / 2) < 0.03 * n  # ... the control is blind to them


def test_reuse_never_seen_samples_are_kept():
    sifter_ = ReuseLossSifter(100, beta_value=3.0)
    sifter_.record(torch.arange(50), torch.rand(50))
    prob = reuse_keep_probability(sifter_.last_loss, 3.0)
    assert (prob[50:] == 1).all() and (prob[:50] < 1).all()
    for _ in range(5):
        assert set(range(50, 100)) <= set(sifter_.plan_epoch().tolist())


def test_reuse_sampler_len_matches_iteration():
    sifter_ = ReuseLossSifter(200, beta_value=1.0)
    sifter_.record(torch.arange(200), torch.rand(200))
    sampler = ReuseSampler(sifter_)
    size = len(sampler)
    order = list(sampler)
    assert len(order) == size and len(set(order)) == size
    assert sorted(order) == sorted(set(order)) and list(sampler) != order  # a new plan each epoch


def test_seq2seq_loss_matches_model_loss_per_sample():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                                d_kv=8, decoder_start_token_id=0, pad_token_id=0)).eval()
    ids = torch.randint(2, 32, (2, 6))
    labels = torch.randint(2, 32, (2, 4))
    labels[1, 2:] = -100
    per_sample = Seq2SeqLoss().loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                            "labels": labels})
    with torch.no_grad():
        for i in range(2):
            ref = model(input_ids=ids[i:i + 1], labels=labels[i:i + 1]).loss
            assert torch.allclose(per_sample[i], ref, atol=1e-5)


def test_precision_option_sets_scoring_autocast():
    seen = []

    class Spy(FirstColumnLoss):
        def loss(self, model, transformed_batch, original_batch=None):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return super().loss(model, transformed_batch)

    list(SiftingDataloader(config(), stream(100, 50), Spy(), KnownLossModel(), precision="bf16-mixed"))
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    seen.clear()
    list(SiftingDataloader(config(), stream(100, 50), Spy(), KnownLossModel()))
    assert seen and not any(enabled for enabled, _ in seen)
    with pytest.raises(ScilmError, match="precision"):
        SiftingDataloader(config(), stream(100, 50), Spy(), KnownLossModel(), precision="fp8")


def test_random_control_drops_at_the_expected_rate():
    """The control must not share the selector's random stream (which would keep everything)."""
    import torch

    from scilm.sifting import LossHistory, RandomLoss, select_by_loss

    control, generator = RandomLoss(seed=0), torch.Generator().manual_seed(0)
    history = LossHistory.empty(500)
    kept = sum(int(select_by_loss(control.loss(None, torch.zeros(64, 1)), history, 1.0, generator).sum())
               for _ in range(200))
    assert abs(kept / (200 * 64) - 0.5) < 0.03
