"""vllm.v1.engine.exceptions of the stand-in."""


class EngineDeadError(Exception):
    """Raised when the EngineCore dies. Unrecoverable."""
