"""aegis-tf: backdoor attacks, detection (AEGIS) and repair for Keras image classifiers."""

__version__ = "0.1.0"
