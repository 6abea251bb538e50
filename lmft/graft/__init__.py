"""The grafting stage (rules/graft.smk): masks of fine-tuned parameters grafted onto the pre-trained model."""
