"""klpd: the livepatch state of a Linux host, computed exactly as the kernel will compute it."""

__version__ = "0.1.0"
