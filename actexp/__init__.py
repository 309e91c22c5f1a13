"""actexp: activation vectors of causal language models, as Hydra jobs."""

__version__ = "0.1.0"
