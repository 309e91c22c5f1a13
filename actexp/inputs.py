"""Texts given on the command line: `text=...` or `file=PATH`, checked before any work starts."""

from pathlib import Path
from typing import Optional, Tuple

from .errors import UserError


def read_text(text: Optional[str], file: Optional[str], text_key: str = "text", file_key: str = "file") -> Tuple[str, str]:
    """The text and where it came from ("text" or the file path); UserError if unusable."""
    if text is None and file is None:
        raise UserError(f'nothing to read: give {text_key}="some text" or {file_key}=PATH')
    if text is not None and file is not None:
        raise UserError(f"give {text_key} or {file_key}, not both")
    if file is None:
        if not text.strip():
            raise UserError(f'{text_key} is empty: give some text, {text_key}="..."')
        return text, "text"
    path = Path(file).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"{file_key}={file} {what}: give the path of a UTF-8 text file")
    data = path.read_bytes()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{file_key}={file} is not UTF-8 text (invalid byte at offset {e.start}): convert it to UTF-8") from None
    if "\x00" in content:
        raise UserError(f"{file_key}={file} is not text (it contains NUL bytes): give a UTF-8 text file")
    if not content.strip():
        raise UserError(f"{file_key}={file} is empty: give a file with some text")
    return content, str(path)
