"""One-line messages for misspelt config keys and options, with "did you mean ...?" (difflib over
the schema's keys and the options in conf/)."""

import dataclasses
import errno
import os
import difflib
import re
import typing
from typing import List, Optional

from omegaconf import OmegaConf

from ..errors import UserError, _os_error, _unwritable, one_line
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


def check_keys(cfg) -> None:
    """Refuse a key the schema does not have (an override with `+` can add one): one line, with the
    closest known key."""
    known = config_keys()
    parents = {k.rsplit(".", 1)[0] for k in known if "." in k}

    def unknown(node: dict, prefix: str) -> Optional[str]:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if key not in known:
                return key
            if isinstance(value, dict) and key in parents:
                found = unknown(value, key + ".")
                if found:
                    return found
        return None

    key = unknown(OmegaConf.to_container(cfg, resolve=False), "")
    if key:
        close = _closest(key, known)
        raise UserError(f"unknown key {key!r}: {f'did you mean {close}?' if close else '`--cfg job` lists the keys'}")


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
    typed = re.search(r"Error merging override ([\w.]+)=(\S*).*?Value '.*?' (?:of type '\w+' could not be converted to "
                      r"(\w+)|is not a valid (bool))", f"{text} {error.__cause__ or ''}", re.S)
    if typed:
        from .ranges import AT_LEAST_1

        key, value, kind = typed.group(1), typed.group(2), typed.group(3) or "Boolean"
        allowed = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false"}.get(kind, kind)
        if key in AT_LEAST_1:
            allowed = "a whole number of at least 1" + (f", or {AT_LEAST_1[key]}" if AT_LEAST_1[key] else "")
        return f"{key}={value} is not {allowed.split(',')[0]}: give {allowed}"
    grammar = re.search(r"(mismatched input|extraneous input|no viable alternative|token recognition error|LexerNoViableAltException)[^\n]*", text)
    if grammar:
        at = re.search(r"at input '([^']*)'", grammar.group(0))
        return (f"cannot parse an override{f' at {at.group(1)!r}' if at else ''}: a value with commas, spaces, quotes or "
                "brackets needs inner quotes, e.g. 'text=\"Hello, world\"'")
    return None


def message(e: BaseException) -> str:
    """What the CLI prints after `error: ` for bad input (and the API raises as a UserError)."""
    e = _os_error(e) or e
    if _unwritable(e) and e.errno == errno.EROFS:
        return (f"cannot write {os.path.abspath(e.filename)}: {e.strerror}: run where you can write, or move the run folder with "
                "hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m) and the store with paths.artifacts=DIR")
    if _unwritable(e):  # EACCES/EPERM: reading or writing, Python cannot tell which
        return (f"cannot use {os.path.abspath(e.filename)}: {e.strerror}: give a path this user may read (inputs) "
                "or write (hydra.run.dir=DIR, paths.artifacts=DIR)")
    return explain(e) or one_line(e)
