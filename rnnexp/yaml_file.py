"""Reading params files: ``yaml.safe_load`` semantics, but refusing what DVC refuses.

A key given twice in one mapping (DVC refuses such a params file; plain YAML keeps
the last value), bytes that are not UTF-8, and tags that would build objects each
give one :class:`~rnnexp.errors.ConfigError` naming the file and line.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from rnnexp.errors import ConfigError


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (as DVC does)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}  # key -> line it was first given on
        for key_node, _ in node.value:
            if key_node.tag.endswith(":merge"):
                continue  # "<<: *anchor" merges may override keys, as in safe_load
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class refuses it
            if key in seen:
                problem = f"duplicate key {key!r} (first given at line {seen[key]})"
                raise yaml.MarkedYAMLError(problem=problem, problem_mark=key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Read a UTF-8 YAML file as ``yaml.safe_load`` would, but refusing duplicate keys.

    Raises:
        ConfigError: naming the file (and line) if it is missing, unreadable, not UTF-8,
            malformed, or holds a duplicate key or a tag that would build an object.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, yaml.constructor.ConstructorError):
            # e.g. !!python/object/apply, which would run code under yaml.load
            raise ConfigError(
                f"{path}: refused YAML tag{where}: {problem}; params files are read with "
                "yaml.safe_load, which builds plain values only"
            ) from None
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
