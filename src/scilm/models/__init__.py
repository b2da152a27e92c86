"""Model builders: offline presets, hub ids and local directories; LoRA through PEFT."""
