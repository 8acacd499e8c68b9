"""Native PyTorch implementations of the language models VirNucPro embeds with."""
