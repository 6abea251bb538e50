"""The fine-tuning stage (rules/finetune.smk): method types, the training loop, MeZO, generation, and the memory job."""
