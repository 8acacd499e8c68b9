"""VirNucPro: viral sequence identification."""
__version__ = "0.1.0"
