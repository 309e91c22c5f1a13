"""actexp: activation vectors of causal language models, as Hydra jobs and from Python.

    import actexp
    with actexp.Session("pooling=short") as s:
        s.vectors(["some text"]).raw      # [1, H] float32

The Python API (api.py) is imported on first use, so `import actexp` stays instant.
"""

from .version import __version__  # noqa: F401 (the package's version)
__all__ = ["Session", "Vectors", "Similarity", "Mean", "UserError", "analyze", "compose_config", "open_store", "samples",
           "LabelledTexts"]


def __getattr__(name):
    if name == "UserError":
        from .errors import UserError

        return UserError
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'actexp' has no attribute {name!r}")
