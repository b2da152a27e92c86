"""Data readers: validated records and splits for every task scilm trains."""
