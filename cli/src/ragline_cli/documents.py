"""Read files and folders of plain text, Markdown or HTML into documents for ingestion."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst", ""}
HTML_SUFFIXES = {".html", ".htm"}
_SKIP_TAGS = {"script", "style", "noscript", "template"}
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in lines if line)
    return f"{parser.title.strip()}\n\n{text}" if parser.title.strip() else text


@dataclass(frozen=True)
class SourceFile:
    path: Path
    doc_id: str


def discover(paths: list[str]) -> Iterator[SourceFile]:
    """Files to ingest: a file as given (id = its name), a folder recursively (id = path relative to it)."""
    for raw in paths:
        root = Path(raw)
        if root.is_file():
            yield SourceFile(root, root.name)
        elif root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if path.suffix.lower() in TEXT_SUFFIXES | HTML_SUFFIXES:
                    yield SourceFile(path, path.relative_to(root).as_posix())
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")


def read_text(path: Path) -> str:
    """The document's text; raises ValueError for files that are not text."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise ValueError("binary file (NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if path.suffix.lower() in HTML_SUFFIXES:
        text = html_to_text(text)
    if not text.strip():
        raise ValueError("empty file")
    return text
