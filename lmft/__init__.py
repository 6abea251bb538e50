"""lmft: reproducible fine-tuning of pre-trained language models, from data to paper tables."""

__version__ = "0.1.0"
