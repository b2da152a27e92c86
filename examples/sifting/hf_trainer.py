"""Smart sifting with the Hugging Face Trainer: override ``get_train_dataloader`` and set max_steps.

The sifted loader has no length (how many batches an epoch yields depends on the losses), so the
Trainer must be given ``max_steps``. The smallest correct integration is the subclass below: wrap
the Trainer's own (already device-prepared) loader and score with the Trainer's model.
Tiny ESM-2 with random weights and synthetic protein-like tensors, so it runs offline in seconds.
"""

import logging
import tempfile

import torch
from transformers import EsmForSequenceClassification, Trainer, TrainingArguments

from scilm.models.protein import esm2_config, esm2_tokenizer
from scilm.sifting import (
    LossConfig,
    RelativeProbabilisticSiftConfig,
    SequenceClassificationLoss,
    SiftingBaseConfig,
    SiftingDataloader,
)

logging.basicConfig(level=logging.WARNING)
logging.getLogger("scilm.sifting").setLevel(logging.INFO)
torch.manual_seed(0)
torch.set_num_threads(1)  # a model this small runs fastest on one thread

SIFT_CONFIG = RelativeProbabilisticSiftConfig(
    beta_value=1, loss_history_length=200,
    loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=10)))


class SiftingTrainer(Trainer):
    def get_train_dataloader(self):
        return SiftingDataloader(sift_config=SIFT_CONFIG, orig_dataloader=super().get_train_dataloader(),
                                 loss_impl=SequenceClassificationLoss(), model=self.model,
                                 pad_values={"input_ids": self.processing_class.pad_token_id})


class ToyProteins(torch.utils.data.Dataset):
    """Random residues; label 1 when the sequence has more lysines (K) than average."""

    def __init__(self, tokenizer, n=512, length=24):
        residues = torch.tensor(tokenizer.convert_tokens_to_ids(list("ACDEFGHIKLMNPQRSTVWY")))
        body = residues[torch.randint(len(residues), (n, length))]
        cls = torch.full((n, 1), tokenizer.cls_token_id)
        eos = torch.full((n, 1), tokenizer.eos_token_id)
        self.input_ids = torch.cat([cls, body, eos], dim=1)
        lysines = (body == tokenizer.convert_tokens_to_ids("K")).sum(dim=1).float()
        self.labels = (lysines > lysines.mean()).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        ids = self.input_ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def main():
    tokenizer = esm2_tokenizer()
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=40, per_device_train_batch_size=16, learning_rate=1e-3,
                                 report_to="none", save_strategy="no", logging_steps=20, use_cpu=True,
                                 disable_tqdm=True, dataloader_num_workers=0)
        trainer = SiftingTrainer(model=model, args=args, train_dataset=ToyProteins(tokenizer),
                                 processing_class=tokenizer)
        result = trainer.train()
    print(f"trained {result.global_step} steps, final loss {result.training_loss:.3f}")
    assert result.global_step == 40


if __name__ == "__main__":
    main()
