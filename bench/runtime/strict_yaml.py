"""YAML loading that refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys and drops the first without a word, so a second
``ddim_eta0:`` block in a config would silently replace the user's first one.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError


class _NoDuplicateKeysLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if line is not None:
                raise ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first given at line {line + 1})", key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises a ConstructorError (a MarkedYAMLError) on a duplicate mapping key."""
    return yaml.load(text, Loader=_NoDuplicateKeysLoader)
