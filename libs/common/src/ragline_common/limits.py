"""Limits on the data each service owns, declared once here and referred to by every service that checks them."""

from __future__ import annotations

import unicodedata

# Retriever: search.
MAX_K = 100  # the ceiling of RETRIEVER_MAX_K and API_MAX_K
MAX_FILTER_CONDITIONS = 32
MAX_ANY_OF = 1024
# A metadata key in a filter: up to five dotted parts (nested keys) of letters, digits, '_' and '-'.
FILTER_KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,4}$"
# Retriever: documents.
MAX_DOC_ID_CHARS = 256
MAX_METADATA_KEYS = 64
MAX_METADATA_BYTES = 16_384  # metadata is copied onto every chunk: keep it small
# Generator: the default of GENERATOR_MAX_TOKENS_CAP; the running value is in its Info (max_tokens_cap).
DEFAULT_MAX_TOKENS_CAP = 1024
# Api: texts one /v1/embeddings call may carry (OpenAI's own limit); sent on in the embedder's batch size.
MAX_EMBED_INPUTS = 2048

DOC_ID_RULE = (
    f"1 to {MAX_DOC_ID_CHARS} characters, no control characters, and no empty, '.' or '..' path segments "
    "(no leading, trailing or doubled '/'): HTTP clients rewrite such URLs, so the document could not be reached"
)


def k_problem(k: object, max_k: int) -> str | None:
    """The one message for a bad k, wherever it is checked (api schema, api setting, retriever)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        return f"k must be an integer from 1 to {max_k}, got {k!r}"
    return None


def max_tokens_problem(max_tokens: int, cap: int) -> str | None:
    if max_tokens > cap:
        return f"max_tokens {max_tokens} exceeds the limit of {cap} (max_tokens_cap)"
    return None


def doc_id_problem(doc_id: str) -> str | None:
    """Why `doc_id` cannot be a document id, or None when it can."""
    if not 1 <= len(doc_id) <= MAX_DOC_ID_CHARS:
        return f"id has {len(doc_id)} characters; an id has {DOC_ID_RULE}"
    if any(unicodedata.category(c) == "Cc" for c in doc_id):
        return f"id {doc_id!r} holds a control character; an id has {DOC_ID_RULE}"
    if any(seg in ("", ".", "..") for seg in doc_id.split("/")):
        return f"id {doc_id!r} has an empty, '.' or '..' path segment; an id has {DOC_ID_RULE}"
    return None
