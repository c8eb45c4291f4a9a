"""longctx_jax: context-window extension for language models in JAX."""

__version__ = "0.1.0"
