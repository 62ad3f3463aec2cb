"""ragline generator: prompt → tokens, streamed, from llama.cpp or vLLM."""

__version__ = "0.1.0"
