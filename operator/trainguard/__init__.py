"""trainguard: keeps AI-agent training jobs inside the GPU and network behaviour they declared."""

__version__ = "0.1.0"
