"""SSD300/SSD512 single-shot multibox detector: train, evaluate, predict."""

__version__ = "0.1.0"  # the one place the version is set: setup.py and --version read it
