"""A strict YAML reader for config files: safe types only, no aliases, no key given twice.

An alias (`*name`) is refused where the parser meets it, before anything is built: a 333-byte file of nested
aliases ("billion laughs") expands to 9**9 items and never returns. A config has no use for them: write
the values out. A key given twice in one mapping is refused too (PyYAML keeps the last one silently).

Base layer: PyYAML, imported by `config.load_yaml` when a file is read.
"""

from __future__ import annotations

from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML alias *{event.anchor} refused (aliases can expand without bound: write the values out)",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key (a list): the base class says so
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {str(key)[:60]!r} given twice (first on line {first}); keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str) -> Any:
    """The YAML document in `text`, as `yaml.safe_load` reads it, minus aliases and repeated keys."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  # a SafeLoader subclass
