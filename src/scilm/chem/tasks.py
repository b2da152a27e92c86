"""The five Text+Chem tasks: their published English prompts, and one example of any of them.

From GT4SD's multitask_text_and_chemistry_t5 (Christofidellis et al., ICML 2023): a task is marked
by its prompt at the start of the source. ``scilm.data.textchem`` reads and writes the JSONL form;
``scilm.chem`` scores outputs per task; both take the definitions from here.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPTS = {
    "forward-prediction": "Predict the product of the following reaction:",
    "retrosynthesis": "Predict the reaction that produces the following product:",
    "paragraph-to-actions": "Which actions are described in the following paragraph:",
    "text-to-smiles": "Write in SMILES the described molecule:",
    "smiles-to-caption": "Caption the following SMILES:",
}
TASKS = tuple(PROMPTS)
MOLECULE_TASKS = ("forward-prediction", "retrosynthesis", "text-to-smiles")


@dataclass(frozen=True)
class TextChemExample:
    """One seq2seq pair, the task its prompt names (None only if the reader allowed it) and, for
    USPTO reactions converted with their class, the reaction class (1-10)."""

    source: str
    target: str
    task: str | None
    reaction_class: int | None = None


def make_example(task: str, text: str, target: str, reaction_class: int | None = None) -> TextChemExample:
    """The example for ``task`` with input ``text``: source = prompt + " " + text."""
    return TextChemExample(f"{PROMPTS[task]} {text}", target, task, reaction_class)


def task_of(source: str) -> str | None:
    """The task whose prompt (followed by a space) starts ``source``, or None."""
    for task, prompt in PROMPTS.items():
        if source.startswith(prompt + " "):
            return task
    return None


def input_of(example: TextChemExample) -> str:
    """The source without its prompt."""
    return example.source[len(PROMPTS[example.task]) + 1:] if example.task else example.source
