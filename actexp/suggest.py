"""One-line messages for misspelt config keys and options, with "did you mean ...?" (difflib over
the schema's keys and the options in conf/)."""

import dataclasses
import difflib
import re
import typing
from typing import List, Optional

from .schema import CONF, Config


def config_keys(node=Config, prefix: str = "") -> List[str]:
    """Every dotted key of the schema (model.layers, model.arch.hidden_size, ...)."""
    keys = []
    hints = typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        key = prefix + f.name
        keys.append(key)
        kind = next((t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)), None)
        if kind is not None:
            keys += config_keys(kind, key + ".")
    return keys


def _closest(word: str, choices: List[str]) -> Optional[str]:
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def explain(error: BaseException) -> Optional[str]:
    """A one-line message for a misspelt key or option in a Hydra composition error, else None."""
    text = str(error)
    key = re.search(r"Could not override '([^']+)'", text)
    if key and "not in" in str(error.__cause__ or ""):
        close = _closest(key.group(1), config_keys())
        hint = f"did you mean {close}?" if close else "`--cfg job` lists the keys"
        return f"unknown key {key.group(1)!r}: {hint}"
    option = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if option:
        group, name = option.groups()
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        close = _closest(name, options)
        hint = f": did you mean {close}?" if close else ""
        return f"{group} has no option {name!r}{hint} (options: {', '.join(options)})"
    grammar = re.search(r"(mismatched input|extraneous input|no viable alternative|token recognition error|LexerNoViableAltException)[^\n]*", text)
    if grammar:
        said = grammar.group(0).split(" See https")[0].strip()
        return (f"cannot parse an override ({said[:60]}{'...' if len(said) > 60 else ''}): a value with commas, spaces, quotes or "
                "brackets needs inner quotes, e.g. 'text=\"Hello, world\"'")
    return None
