"""Texts given on the command line: `text=...` or `file=PATH`, checked before any work starts."""

import hashlib
from pathlib import Path
from typing import Optional, Tuple

from ..errors import UserError


def decode_text(data: bytes) -> str:
    """The UTF-8 text of a file's bytes; ValueError saying what it is instead."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (invalid byte at offset {e.start})") from None
    if "\x00" in text:
        raise ValueError("not text (it contains NUL bytes)")
    return text


def read_text(text: Optional[str], file: Optional[str], text_key: str = "text", file_key: str = "file"
              ) -> Tuple[str, dict]:
    """The text and its record for outputs ({source: "text" or the file path, sha256}); UserError if unusable."""
    if text is None and file is None:
        raise UserError(f'nothing to read: give {text_key}="some text" or {file_key}=PATH')
    if text is not None and file is not None:
        raise UserError(f"give {text_key} or {file_key}, not both")
    if file is None:
        if not text.strip():
            raise UserError(f'{text_key} is empty: give some text, {text_key}="..."')
        return text, _record(text, "text")
    path = Path(file).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"{file_key}={file} {what}: give the path of a UTF-8 text file")
    try:
        content = decode_text(path.read_bytes())
    except ValueError as e:
        raise UserError(f"{file_key}={file} is {e}: give a UTF-8 text file") from None
    if not content.strip():
        raise UserError(f"{file_key}={file} is empty: give a file with some text")
    return content, _record(content, str(path.resolve()))


def _record(text: str, source: str) -> dict:
    return {"source": source, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
