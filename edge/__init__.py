"""wardgate: the edge gateway of the smart-ward program."""

__version__ = "0.1.0"
