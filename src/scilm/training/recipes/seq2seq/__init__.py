"""Text+Chem T5: the five chemistry-language tasks from source/target JSONL."""
