"""The one verified way flareseg reads YAML (config files, ``--set`` values).

On top of ``yaml.SafeLoader`` (plain data only, no code):

* a key given twice in one mapping is an error naming the key and both lines (plain YAML lets
  the later one win silently, dropping e.g. a whole ``inference:`` block);
* aliases may not expand the document beyond :data:`MAX_NODES` nodes, measured on the composed
  node graph before anything is built (a 379-byte "billion laughs" file is refused in
  milliseconds instead of exhausting memory), and a recursive alias is refused;
* a file must be a regular file (a FIFO would block) of at most :data:`MAX_BYTES`, UTF-8 text.

Every problem is a :class:`flareseg.errors.ConfigError`, one bounded line naming the source.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from flareseg.errors import ConfigError, clip, short_repr

#: the largest config file read (bytes); the shipped configs are a few kilobytes
MAX_BYTES = 1 << 20
#: the most nodes (scalars, lists, mappings) a document may expand to, aliases followed
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _TooLarge(Exception):
    pass


class _Recursive(Exception):
    pass


class _Duplicate(Exception):
    def __init__(self, key: Any, first: int, line: int):
        self.key, self.first, self.line = key, first, line


class _CheckedLoader(yaml.SafeLoader):
    """SafeLoader refusing duplicate keys (merge keys ``<<`` excepted: they may be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:   # unhashable: SafeLoader reports it
                    continue
                if first is not None:
                    raise _Duplicate(key, first, line)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes of the document with every alias expanded; raises :class:`_TooLarge` above ``limit``
    and :class:`_Recursive` for an alias inside its own anchor.  Linear in the node graph."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        k = id(node)
        if k in memo:
            return memo[k]
        if k in active:
            raise _Recursive
        active.add(k)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                n += size(child)
                if n > limit:
                    raise _TooLarge
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                n += size(key) + size(value)
                if n > limit:
                    raise _TooLarge
        active.discard(k)
        memo[k] = n
        return n

    return size(root)


def parse_yaml(text: str, src: str, max_nodes: int = MAX_NODES) -> Any:
    """The plain data of the YAML document ``text`` (``None`` for an empty one); ``src`` names it
    in errors.  Raises :class:`ConfigError` for invalid YAML, a duplicate key, a document expanding
    beyond ``max_nodes`` nodes, a recursive alias or nesting too deep."""
    loader = _CheckedLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_size(root, max_nodes)
        return loader.construct_document(root)
    except _TooLarge:
        raise ConfigError(f"{src}: YAML aliases expand to more than {max_nodes} values "
                          "(an alias bomb?); write the values out") from None
    except _Duplicate as e:
        raise ConfigError(f"{src}:{e.line}: duplicate key {short_repr(e.key)} (first at line {e.first}); "
                          "a later value would silently replace the earlier: keep one") from None
    except _Recursive:
        raise ConfigError(f"{src}: a YAML alias refers to its own anchor (a recursive value)") from None
    except RecursionError:
        raise ConfigError(f"{src}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not valid YAML ({clip(' '.join(str(e).split()), 400)})") from None
    finally:
        loader.dispose()


def read_yaml(path: os.PathLike | str, max_bytes: int = MAX_BYTES) -> Any:
    """Read and parse the YAML file ``path`` (see :func:`parse_yaml`).  Raises
    :class:`ConfigError` naming the file when it is missing, a folder, not a regular file, larger
    than ``max_bytes``, unreadable, not UTF-8 or not valid/safe YAML."""
    p = Path(path)
    src = str(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ConfigError(f"{src}: config file does not exist") from None
    except OSError as e:
        raise ConfigError(f"{src}: config file cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{src}: config path is a folder, not a YAML file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{src}: config path is not a regular file (a pipe or device?)")
    if st.st_size > max_bytes:
        raise ConfigError(f"{src}: config file is {st.st_size} bytes, more than the {max_bytes} "
                          "a config may have")
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise ConfigError(f"{src}: config file is more than the {max_bytes} bytes a config may have")
        text = raw.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{src}: config file cannot be read ({e.__class__.__name__}: "
                          f"{e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{src}: config file cannot be read (UnicodeDecodeError: not UTF-8 "
                          f"text at byte {e.start})") from None
    return parse_yaml(text, src)
