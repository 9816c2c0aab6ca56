"""Reading params files: ``yaml.safe_load`` semantics, but refusing what DVC refuses.

A key given twice in one mapping (DVC refuses such a params file; plain YAML keeps
the last value), bytes that are not UTF-8, tags that would build objects, aliases
that refer to themselves or expand to more values than any params file holds (the
"billion laughs"), and nesting too deep to parse each give one
:class:`~rnnexp.errors.ConfigError` naming the file, the line and, where there is
one, the key. Messages are bounded in length whatever the file holds.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from rnnexp.errors import ConfigError

# A params file holds a few hundred values; anchors and aliases may share parts of
# it, but a value that expands to more than this is an alias bomb, not a setting.
MAX_VALUES = 100_000
MAX_DEPTH = 64  # a params file nests 4 deep (tune.space.<param>.choices)
_MESSAGE_CHARS = 300  # longest YAML problem text quoted in a message

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2


def short_repr(value: Any) -> str:
    """``repr(value)``, shortened (``...``) to a few dozen characters whatever its size.

    Example:
        >>> short_repr(["lol"] * 1000)
        "['lol', 'lol', 'lol', 'lol', ...]"
    """
    return _short.repr(value)


class RefusedYAML(yaml.MarkedYAMLError):
    """YAML that parses but that a params file must not hold (duplicate key, alias bomb)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (as DVC does),
    self-referring aliases, aliases expanding to more than :data:`MAX_VALUES` values and
    nesting deeper than :data:`MAX_DEPTH`; all checked on the composed node graph
    before any value is built."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _NodeCheck(self).size(node, "", 0)
        return node


class _NodeCheck:
    """One walk over a composed document: expanded sizes (memoised per node, so an alias
    bomb costs as much as its text), cycles, depth, duplicate keys (named by key path)."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def size(self, node: yaml.Node, path: str, depth: int) -> int:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        where = path if len(path) <= 60 else path[:40] + "..." + path[-16:]
        where = where or "the top level"
        if key in self.open:
            raise RefusedYAML(problem=f"{where}: an alias refers to itself (a recursive value)",
                              problem_mark=node.start_mark)  # fmt: skip
        if depth > MAX_DEPTH:
            raise RefusedYAML(problem=f"{where}: nested deeper than {MAX_DEPTH} levels",
                              problem_mark=node.start_mark)  # fmt: skip
        self.open.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                total += self.size(item, f"{path}[{i}]", depth + 1)
        elif isinstance(node, yaml.MappingNode):
            self._unique_keys(node, path)
            for key_node, value_node in node.value:
                name = self._key(key_node)
                label = "<<" if name is None else str(name)
                total += self.size(key_node, path, depth + 1)
                total += self.size(value_node, f"{path}.{label}" if path else label, depth + 1)
        self.open.discard(key)
        if total > MAX_VALUES:
            raise RefusedYAML(
                problem=f"{where}: aliases expand this value to {total:,} values (more than "
                f"{MAX_VALUES:,}; an alias bomb?); write the values out instead",
                problem_mark=node.start_mark,
            )
        self.sizes[key] = total
        return total

    def _key(self, node: yaml.Node) -> Any:
        """A scalar key's value as safe_load builds it; None for merge keys and non-scalars."""
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":merge"):
            return None
        return self.loader.construct_object(node, deep=True)

    def _unique_keys(self, node: yaml.MappingNode, path: str) -> None:
        seen: dict[Any, int] = {}  # key -> line it was first given on
        for key_node, _ in node.value:
            name = self._key(key_node)  # "<<: *anchor" merges may override keys, as in safe_load
            if name is None or not isinstance(name, (str, int, float, bool)):
                continue
            if name in seen:
                dotted = f"{path}.{name}" if path else str(name)
                raise RefusedYAML(
                    problem=f"duplicate key {dotted} (first given at line {seen[name]}); "
                    "YAML would keep the last value silently, DVC refuses the file",
                    problem_mark=key_node.start_mark,
                )
            seen[name] = key_node.start_mark.line + 1


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."


def _not_utf8(path: Path, blob: bytes, exc: UnicodeDecodeError) -> ConfigError:
    """Where the first non-UTF-8 byte is: line, column and value (e.g. Latin-1 0xe9)."""
    before = blob[: exc.start]
    line = before.count(b"\n") + 1
    column = exc.start - (before.rfind(b"\n") + 1) + 1
    return ConfigError(
        f"{path}: not UTF-8 text at line {line}, column {column} (byte {exc.start} is "
        f"0x{blob[exc.start]:02x}: {exc.reason}); save the file as UTF-8 (a Latin-1 'é' is "
        "0xe9, in UTF-8 it is 0xc3 0xa9)"
    )


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying what is wrong and where (``at line L, column C: ...``), bounded."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [""])[0]
    return f"{where}: {_clip(problem)}"


def read_yaml(path: str | Path) -> Any:
    """Read a UTF-8 YAML file as ``yaml.safe_load`` would, but refusing duplicate keys.

    Raises:
        ConfigError: naming the file (and line) if it is missing, unreadable, not UTF-8,
            malformed, or holds a duplicate key, a tag that would build an object, a
            recursive alias or an alias bomb.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
        text = blob.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a params file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, blob, exc) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text read as :func:`read_yaml` reads a file; errors start with ``source``.

    Raises:
        ConfigError: ``<source>: malformed YAML at line L, column C: ...`` and the like.
    """
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RefusedYAML as exc:
        raise ConfigError(f"{source}: refused{yaml_problem(exc)}") from None
    except yaml.constructor.ConstructorError as exc:
        # e.g. !!python/object/apply, which would run code under yaml.load
        raise ConfigError(
            f"{source}: refused YAML tag{yaml_problem(exc)}; params files are read with "
            "yaml.safe_load, which builds plain values only"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML{yaml_problem(exc)}") from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise ConfigError(f"{source}: malformed YAML: nested too deeply to read") from None
