"""metasched: one queue in front of the schedulers of a hybrid cluster."""
__version__ = "0.1.0"
