"""Stage 2: fine-tune a LoRA-MoE from a fixed allocation and evaluate it."""
