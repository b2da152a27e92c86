"""Settings of the per-residue classification recipe (``--task residue``)."""

from __future__ import annotations

from dataclasses import dataclass

from scilm.data.residue import SIGNALP_FIELDS
from scilm.errors import ScilmError, name
from scilm.training.settings import ProteinRecipeSettings, setting

TABLE_COLUMNS = ("sequence_column", "label_column", "mask_column", "id_column")


@dataclass
class Config(ProteinRecipeSettings):
    """Fine-tune a protein LM to put one label on each residue (SignalP-6 regions, FLIP secondary structure
    and binding sites)."""

    task: str = setting("residue", "What to train (this recipe: residue).")
    label_column: str = setting("label", "Table column with one label character per residue (FLIP SS3: ss3).")
    mask_column: str | None = setting(None, "Table column with one 0/1 per residue, 1 = scored (FLIP SS3: mask); "
                                            "none: every residue is scored.")
    label_alphabet: str | None = setting(None, "The label characters in class order, e.g. HEC (a character outside "
                                               "it is an error); none: the training labels, sorted.")
    fasta_fields: str = setting(SIGNALP_FIELDS, "3-line FASTA (header, sequence, labels): names of the header's "
                                                "'|'-separated fields; 'id' names the record, --split-column may "
                                                "name one (SignalP-6: partition).")

    def check_recipe(self) -> None:
        if self.task != "residue":
            raise ScilmError(f"{name('task')} {self.task!r}: this recipe trains residue")
        if self.long_policy != "head":  # labels are cut with their residues, from the head only
            raise ScilmError(f"{name('long_policy')} {self.long_policy}: per-residue labels align to the first "
                             f"{name('truncate')} residues; use head")
        if self.label_alphabet is not None and len(set(self.label_alphabet)) < 2:
            raise ScilmError(f"{name('label_alphabet')} {self.label_alphabet!r}: a classifier needs at least two "
                             "label characters")
        if self.label_alphabet is not None and len(set(self.label_alphabet)) != len(self.label_alphabet):
            raise ScilmError(f"{name('label_alphabet')} {self.label_alphabet!r} repeats a character")
