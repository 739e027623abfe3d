"""mlrec: training multilingual recommenders on Hugging Face encoders."""

__version__ = "0.1.0"
