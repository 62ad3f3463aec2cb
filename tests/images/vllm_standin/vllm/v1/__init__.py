"""vllm.v1 of the stand-in."""
