"""Unit tests for reading files and folders into documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragline_cli.documents import discover, html_to_text, read_text

pytestmark = pytest.mark.unit


def test_folder_ids_are_relative_paths_and_file_ids_are_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.md").write_text("# x")
    (tmp_path / "y.txt").write_text("y")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    found = {f.doc_id for f in discover([str(tmp_path)])}
    assert found == {"a/x.md", "y.txt"}
    assert [f.doc_id for f in discover([str(tmp_path / "a" / "x.md")])] == ["x.md"]


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list(discover([str(tmp_path / "nope")]))


def test_html_keeps_title_and_text_and_drops_scripts() -> None:
    text = html_to_text("<html><title>T</title><script>var x=1</script><p>Hello <b>you</b></p><p>Bye</p></html>")
    assert text == "T\n\nHello you\nBye"


def test_binary_and_empty_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="binary"):
        read_text(tmp_path / "bin.txt")
    with pytest.raises(ValueError, match="empty"):
        read_text(tmp_path / "empty.txt")
