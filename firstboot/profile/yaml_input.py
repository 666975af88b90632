"""Reading one profile or defaults file as strict YAML.

The file is a regular UTF-8 file of at most MAX_FILE_BYTES whose name is
plain (PROFILE_NAME). Duplicate keys are errors (YAML would silently keep the
last one), and so are keys that are not strings, anchors and aliases, and
nesting deeper than MAX_DEPTH. A file that fails any of these raises
Unreadable: nothing else in it is checked."""

import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from firstboot import files
from firstboot.profile.problems import Keys, Problem, Unreadable, kind

# A profile is a few kilobytes (big-rack.yaml, 300 Pis, is 40 KB). The caps
# keep a wrong file (a disk image, /dev/zero, a FIFO, an alias bomb) from
# hanging the build or eating its memory, and stay far above any real rack.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
# The file name reaches generated files and logs: keep it to what any of them
# can carry unquoted.
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.yaml")

# YAML tags a mapping key may resolve to, as the user would say them.
TAG_KIND = {"int": "an integer", "float": "a number", "bool": "true or false", "null": "null",
            "timestamp": "a date", "binary": "binary data", "merge": "a merge key (<<)",
            "value": "a value key (=)"}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, anchors and aliases,
    and nesting deeper than MAX_DEPTH.

    Aliases are refused rather than counted: a profile has no use for them,
    and an alias bomb (a few lines that expand to millions of nodes) is how
    YAML eats a machine's memory. The depth bound comes before PyYAML's
    recursive composer reaches Python's recursion limit."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in rack profiles: "
                "write the value out", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"YAML anchors (&{event.anchor}) are not allowed in rack profiles", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _key_problems(node: yaml.Node, path: Keys) -> Iterator[Problem]:
    """Every mapping key must be a string: JSON Schema, the merge with
    defaults and every consumer downstream know no other kind."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _key_problems(item, path + (index,))
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                yield from _key_problems(value_node, path + (key_node.value,))
            elif isinstance(key_node, yaml.ScalarNode):
                words = TAG_KIND.get(key_node.tag.rsplit(":", 1)[-1], key_node.tag)
                yield Problem(path, f"key {key_node.value!r} (line {line}) is not a string: YAML read it as "
                                    f"{words} (put it in quotes)")
            else:
                words = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                yield Problem(path, f"key at line {line} is {words}: keys must be strings")


def check_file_name(path: Path) -> None:
    if not PROFILE_NAME.fullmatch(path.name):
        raise Unreadable(Problem(None, f"(file name): {path.name!r} is not a profile file name: letters, "
                                       "digits, '.', '_' and '-', starting with a letter or digit, ending in .yaml",
                                 file=path))


def _read_text(path: Path) -> str:
    """A regular file's UTF-8 text, up to MAX_FILE_BYTES, never blocking on a
    FIFO or a device (firstboot/files.py)."""
    def refuse(message: str) -> Unreadable:
        return Unreadable(Problem(None, message, file=path))

    try:
        data = files.read_regular(path, MAX_FILE_BYTES)
    except files.NotRegularFile as err:
        raise refuse(f"is {err.kind}, not a regular file") from None
    except files.TooLarge as err:
        if err.size is None:
            raise refuse(f"is more than {MAX_FILE_BYTES} bytes; a rack profile is at most that") from None
        raise refuse(f"is {err.size} bytes; a rack profile is at most {MAX_FILE_BYTES} bytes") from None
    except OSError as err:
        raise refuse(f"cannot read: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise refuse(f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def _syntax_problem(path: Path, text: str, err: yaml.YAMLError) -> Problem:
    if isinstance(err, yaml.reader.ReaderError):
        before = text[:err.position]
        position = (before.count("\n") + 1, err.position - before.rfind("\n"))
        return Problem(None, f"character U+{err.character:04X} is not allowed in YAML "
                             "(write it as an escape in a double-quoted string)", path, position)
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    if context and problem.startswith("but "):   # "but found another document" needs what was expected
        problem = f"{context}, {problem}"
    return Problem(None, problem, path, (mark.line + 1, mark.column + 1) if mark else None)


def read_yaml(path: Path) -> dict:
    """The file's top-level mapping ({} for an empty file); Unreadable if
    the file is not a strict YAML mapping."""
    text = _read_text(path)
    loader = None
    try:
        loader = _StrictLoader(text)   # the reader refuses control characters here
        node = loader.get_single_node()
        problems = list(_key_problems(node, ())) if node is not None else []
        if problems:
            raise Unreadable(*(problem.located(path) for problem in problems))
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise Unreadable(_syntax_problem(path, text, err)) from None
    finally:
        if loader is not None:
            loader.dispose()
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise Unreadable(Problem((), f"expected a mapping, got {kind(doc)}", path))
    return doc
