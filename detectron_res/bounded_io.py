"""Reading user files within limits: YAML, JSON and XML that cannot hang or exhaust the process.

Every reader of a file a user hands the toolkit (configs and ``key=value``
overrides, COCO annotation and results JSON, VOC XML, a YOLO ``data.yaml``) goes
through this module, so that one set of limits holds everywhere:

* size: a file larger than its kind's ``max_bytes`` is refused before it is read
  (and at most ``max_bytes + 1`` bytes are ever read, so a FIFO or ``/dev/zero``
  cannot fill the memory);
* encoding: the text must be UTF-8 (a byte-order mark is accepted); the error names
  the first offending byte and its offset;
* nesting: deeper than ``max_depth`` levels of lists / mappings / elements is refused
  (Python's parsers recurse, and a few KB of ``[[[[...`` would end in a
  ``RecursionError`` traceback);
* expansion: YAML aliases (``&a`` / ``*a``) share one object, but whatever walks the
  data afterwards (OmegaConf's merge, a deep copy) expands them; ~1 KB of nested
  aliases (the "billion laughs") expands to 10^9 values. The loaded document is
  walked as its users would walk it, counting values, and refused beyond
  ``max_nodes``. XML entity expansion is bounded by expat itself (>= 2.4.1) and
  external entities are never fetched by :mod:`xml.etree`.

Syntax errors are left to the format's own exception (``yaml.YAMLError``,
``json.JSONDecodeError``, ``xml.etree.ElementTree.ParseError``) so that each reader
keeps its messages with line and column; everything else raises
:class:`BoundedInputError`, one line that starts with the ``source`` given.
"""
from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = [
    "BoundedInputError",
    "Limits",
    "CONFIG_LIMITS",
    "DATA_YAML_LIMITS",
    "DATASET_JSON_LIMITS",
    "RESULTS_JSON_LIMITS",
    "XML_LIMITS",
    "read_text",
    "check_structure",
    "load_yaml_text",
    "load_yaml_file",
    "load_json_text",
    "load_json_file",
    "load_json_document",
    "parse_xml_file",
]

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB


class BoundedInputError(ValueError):
    """A user file beyond a limit (size, nesting, alias expansion) or not UTF-8; one line."""


@dataclass(frozen=True)
class Limits:
    """What one kind of file may hold.

    Attributes:
        max_bytes: largest file accepted.
        max_depth: most levels of nested lists / mappings (XML: elements).
        max_nodes: most values after expanding YAML aliases (XML: elements); JSON
            has no aliases, so its size already bounds its values (not walked).
        what: the kind of file, in words, for the messages.
    """

    max_bytes: int
    max_depth: int
    max_nodes: int
    what: str


# A config is a few KB with ~300 values and 5 levels (data.datasets.<name>.class_names.<i>).
CONFIG_LIMITS = Limits(max_bytes=1 * _MIB, max_depth=32, max_nodes=100_000, what="configs")
# A YOLO data.yaml: class names (LVIS has 1203), paths.
DATA_YAML_LIMITS = Limits(max_bytes=1 * _MIB, max_depth=32, max_nodes=100_000, what="dataset YAML files")
# COCO train2017 instances is 448 MB; LVIS v1 train 1.1 GB. The depth of a COCO file is
# 5 (segmentation polygons); 64 leaves room for extra fields.
DATASET_JSON_LIMITS = Limits(max_bytes=4 * _GIB, max_depth=64, max_nodes=0, what="annotation files")
RESULTS_JSON_LIMITS = Limits(max_bytes=4 * _GIB, max_depth=64, max_nodes=0, what="results files")
# A VOC annotation is ~1 KB with ~10 elements per object.
XML_LIMITS = Limits(max_bytes=16 * _MIB, max_depth=32, max_nodes=1_000_000, what="XML annotations")


def _size_text(n: int) -> str:
    for unit, size in (("GiB", _GIB), ("MiB", _MIB), ("KiB", _KIB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def read_bytes(path: str | os.PathLike, limits: Limits, source: str | None = None) -> bytes:
    """The file's bytes, refusing one larger than ``limits.max_bytes``.

    Raises:
        BoundedInputError: too large (also when it grows while read, or is endless).
        OSError: the file cannot be opened or read (callers word it their way).
    """
    source = source or str(path)
    # O_NONBLOCK: opening a FIFO nobody writes to would otherwise wait forever.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode) or stat.S_ISDIR(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a pipe or socket"
            raise BoundedInputError(f"{source}: is {kind}, expected a {limits.what[:-1]} file")
        size = info.st_size
        if size > limits.max_bytes:
            raise BoundedInputError(
                f"{source}: {_size_text(size)}, larger than the {_size_text(limits.max_bytes)} "
                f"accepted for {limits.what}"
            )
        data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:  # not a regular file, or growing
        raise BoundedInputError(
            f"{source}: more than the {_size_text(limits.max_bytes)} accepted for {limits.what}"
        )
    return data


def decode_utf8(data: bytes, source: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped), or one line naming the bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise BoundedInputError(
            f"{source}: not UTF-8 text (byte 0x{bad} at offset {e.start}); save it as UTF-8"
        ) from None


def read_text(path: str | os.PathLike, limits: Limits, source: str | None = None) -> str:
    """The file as UTF-8 text, within ``limits.max_bytes``."""
    source = source or str(path)
    return decode_utf8(read_bytes(path, limits, source), source)


# ----------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------
class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses documents nested deeper than ``max_depth``
    while composing them (its composer recurses once per level), and counts aliases."""

    max_depth = CONFIG_LIMITS.max_depth

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0
        self.num_aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.num_aliases += 1
        self.depth += 1
        try:
            if self.depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise _TooDeep(mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _TooDeep(Exception):
    def __init__(self, mark):
        super().__init__()
        self.mark = mark


def check_structure(data: Any, limits: Limits, source: str, via_aliases: bool = False) -> None:
    """Visit every value as a deep copy would (shared objects expanded), within the limits.

    Iterative, so that a cyclic alias (``&a [*a]``) meets the depth limit instead of
    the recursion limit. Also for containers from elsewhere that may share objects the
    same way: a checkpoint's stored config (pickle memo references) before OmegaConf
    merges it.
    """
    stack = [(data, 1)]
    count = 0
    how = " through YAML aliases (&anchor / *alias)" if via_aliases else ""
    while stack:
        node, depth = stack.pop()
        count += 1
        if limits.max_nodes and count > limits.max_nodes:
            raise BoundedInputError(
                f"{source}: expands to more than {limits.max_nodes} values{how}, "
                f"the limit for {limits.what}"
            )
        if depth > limits.max_depth:
            raise BoundedInputError(
                f"{source}: nested more than {limits.max_depth} levels deep{how}, "
                f"the limit for {limits.what}"
            )
        if isinstance(node, dict):
            for key, value in node.items():
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, (list, tuple)):
            stack.extend((value, depth + 1) for value in node)


def load_yaml_text(text: str, limits: Limits, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` within ``limits`` (depth while parsing, expansion after).

    Raises:
        BoundedInputError: too long, too deep or expanding beyond the limits.
        yaml.YAMLError: malformed YAML (left to the caller, which words it with the line).
    """
    if len(text) > limits.max_bytes:
        raise BoundedInputError(
            f"{source}: {len(text)} characters, more than the {limits.max_bytes} accepted for {limits.what}"
        )
    loader_type = type("_Loader", (_DepthLimitedLoader,), {"max_depth": limits.max_depth})
    loader = loader_type(text)
    try:
        data = loader.get_single_data()
    except _TooDeep as e:
        where = f" (line {e.mark.line + 1})" if e.mark is not None else ""
        raise BoundedInputError(
            f"{source}: nested more than {limits.max_depth} levels deep{where}, the limit for {limits.what}"
        ) from None
    except RecursionError:  # not expected below max_depth; kept so no traceback can escape
        raise BoundedInputError(f"{source}: nested too deeply to parse") from None
    finally:
        loader.dispose()
    check_structure(data, limits, source, via_aliases=loader.num_aliases > 0)
    return data


def load_yaml_file(path: str | os.PathLike, limits: Limits = CONFIG_LIMITS, source: str | None = None) -> Any:
    """A YAML file read within ``limits`` (see :func:`load_yaml_text`)."""
    source = source or str(path)
    return load_yaml_text(read_text(path, limits, source), limits, source)


# ----------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------
def load_json_text(text: str, limits: Limits, source: str) -> Any:
    """``json.loads`` of ``text`` within ``limits.max_depth``.

    Raises:
        BoundedInputError: nested too deeply, or a number too long to convert
            (Python refuses integers above 4300 digits).
        json.JSONDecodeError: malformed JSON (the caller words it with line and column).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        # The C decoder recurses once per level and stops at Python's recursion limit.
        raise BoundedInputError(
            f"{source}: nested more than {limits.max_depth} levels deep, the limit for {limits.what}"
        ) from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise BoundedInputError(f"{source}: invalid JSON ({str(e).splitlines()[0]})") from None
    if limits.max_depth:
        _check_json_depth(data, limits, source)
    return data


def load_json_file(path: str | os.PathLike, limits: Limits, source: str | None = None) -> Any:
    """A JSON file read within ``limits`` (size, UTF-8, depth; see :func:`load_json_text`).

    Raises:
        BoundedInputError: too large, not UTF-8, nested too deeply, a number too long.
        json.JSONDecodeError: malformed JSON.
        OSError: cannot be read.
    """
    source = source or str(path)
    return load_json_text(read_text(path, limits, source), limits, source)


def load_json_document(
    path: str | os.PathLike, limits: Limits, *, expected: type, expected_what: str, source: str | None = None
) -> Any:
    """A JSON file whose top level must be an ``expected`` (dict, list), every failure
    worded as one line that starts with ``source`` (default: the path).

    Raises:
        ValueError: cannot be read; ``line L column C: invalid JSON (...)``; ``top level
            is a <type>, expected <expected_what>``; or a :class:`BoundedInputError`.
    """
    source = source or str(path)
    try:
        data = load_json_file(path, limits, source)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None
    except OSError as e:
        raise ValueError(f"{source}: cannot read ({e.strerror})") from None
    if not isinstance(data, expected):
        raise ValueError(f"{source}: top level is a {type(data).__name__}, expected {expected_what}")
    return data


def _check_json_depth(data: Any, limits: Limits, source: str) -> None:
    """Refuse nesting deeper than ``limits.max_depth``: a cheap walk of containers only
    (scalars, most of a COCO file's values, are not pushed)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise BoundedInputError(
                f"{source}: nested more than {limits.max_depth} levels deep, the limit for {limits.what}"
            )
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)) and child:
                stack.append((child, depth + 1))


# ----------------------------------------------------------------------------
# XML
# ----------------------------------------------------------------------------
def parse_xml_file(path: str | os.PathLike, limits: Limits = XML_LIMITS, source: str | None = None) -> ET.Element:
    """The root element of an XML file read within ``limits``.

    expat (>= 2.4.1) refuses entity expansion that amplifies the input (its own
    "billion laughs" protection); :mod:`xml.etree` never fetches external entities.

    Raises:
        BoundedInputError: too large, too deep, or too many elements.
        xml.etree.ElementTree.ParseError: malformed XML (with ``.position``).
        OSError: cannot be read.
    """
    source = source or str(path)
    data = read_bytes(path, limits, source)
    # Depth and count are checked while parsing, chunk by chunk, so that a deep file
    # is refused after its first 64 KiB rather than after building millions of elements.
    parser = ET.XMLPullParser(events=("start", "end"))
    root = None
    depth = count = 0
    chunk = 64 * _KIB
    for start in range(0, max(len(data), 1), chunk):
        parser.feed(data[start : start + chunk])
        for event, element in parser.read_events():
            if event == "end":
                depth -= 1
                continue
            root = element if root is None else root
            depth += 1
            count += 1
            if depth > limits.max_depth:
                raise BoundedInputError(
                    f"{source}: elements nested more than {limits.max_depth} levels deep, "
                    f"the limit for {limits.what}"
                )
            if count > limits.max_nodes:
                raise BoundedInputError(f"{source}: more than {limits.max_nodes} elements, the limit for {limits.what}")
    parser.close()
    if root is None:  # close() raises on an empty document; kept for safety
        raise ET.ParseError("no element found")
    return root
