"""vllm.v1.engine of the stand-in."""
