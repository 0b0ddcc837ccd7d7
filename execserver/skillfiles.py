"""
What a skill says about itself: the YAML front matter of its C{SKILL.md}
(name, description, short description) and its C{agents/openai.yaml}
(dependencies, invocation policy), read as the reference reads them
(docs/reference/methods.md).

YAML is read as a node tree, not resolved into Python values: like serde,
a field that wants a string takes a scalar's text as written.
"""

from __future__ import annotations

import yaml

#: A skill's name is at most this many characters.
MAX_NAME_LENGTH = 64
#: A plugin skill's "namespace:name" is at most this many characters.
MAX_QUALIFIED_NAME_LENGTH = MAX_NAME_LENGTH * 2 + 1
PRODUCTS = ("chatgpt", "codex", "atlas")

_NULLS = ("", "~", "null", "Null", "NULL")
_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")


class InvalidSkill(Exception):
    """
    A C{SKILL.md} whose metadata the reference would not load.
    """


def single_line(text: str) -> str:
    return " ".join(text.split())


def front_matter(contents: str) -> str | None:
    """
    The lines between a first line C{---} and the next C{---}.
    """
    lines = contents.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    body = []
    for line in lines[1:]:
        if line.strip() == "---":
            return "\n".join(body) if body else None
        body.append(line)
    return None


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _mapping(node: yaml.Node | None) -> dict[str, yaml.Node] | None:
    """
    A mapping node's members by key; C{None} if it is no mapping or repeats
    a key.
    """
    if not isinstance(node, yaml.MappingNode):
        return None
    members: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.value in members:
            return None
        members[key.value] = value
    return members


def _is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.style is None
                            and node.value in _NULLS)


def _text(node: yaml.Node | None) -> str | None:
    """
    An optional string field: C{None} when absent or null.

    @raise ValueError: if the node is no scalar.
    """
    if _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode):
        raise ValueError("not a string")
    return node.value


def _repaired(text: str) -> str | None:
    """
    Quote plain scalars that YAML cannot read, such as
    C{description: Build for AWS: ECS}, line by line; C{None} if nothing
    needed quoting.
    """
    changed = False
    block_indent = None
    lines = []
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None:
            if not line.strip() or indent > block_indent:
                lines.append(line)
                continue
            block_indent = None
        key, colon, value = line.partition(":")
        if not colon or not key.strip() or (value and not value[0].isspace()):
            lines.append(line)
            continue
        stripped = value.lstrip()
        leading = value[:len(value) - len(stripped)]
        scalar, comment = stripped, ""
        for index, char in enumerate(stripped):
            if char == "#" and (index == 0 or stripped[index - 1].isspace()):
                cut = len(stripped[:index].rstrip())
                scalar, comment = stripped[:cut], stripped[cut:]
                break
        scalar = scalar.rstrip()
        if not scalar:
            lines.append(line)
            continue
        if scalar[0] in "|>":
            block_indent = indent
            lines.append(line)
            continue
        if scalar[0] in "'\"":
            lines.append(line)
            continue
        colon_separated = any(char == ":" and following.isspace()
                              for char, following in zip(scalar, scalar[1:]))
        bad_flow = scalar[0] in "[{@`" and _compose(scalar) is None
        if not colon_separated and not bad_flow:
            lines.append(line)
            continue
        lines.append(f"{key}:{leading}'" + scalar.replace("'", "''") + f"'{comment}")
        changed = True
    return "\n".join(lines) if changed else None


def parse_skill(contents: str, default_name: str) -> dict:
    """
    The name, description and short description of a skill.

    @raise InvalidSkill: where the reference drops the skill.
    """
    text = front_matter(contents)
    if text is None:
        raise InvalidSkill("missing YAML frontmatter delimited by ---")
    document = _compose(text)
    if document is None:
        repaired = _repaired(text)
        document = _compose(repaired) if repaired is not None else None
    members = _mapping(document)
    if members is None:
        raise InvalidSkill("invalid YAML")
    try:
        name = _text(members.get("name"))
        description = _text(members.get("description"))
        short = None
        if "metadata" in members:
            metadata_members = _mapping(members["metadata"])
            if metadata_members is None:
                raise ValueError("metadata is no mapping")
            short = _text(metadata_members.get("short-description"))
    except ValueError as e:
        raise InvalidSkill(f"invalid YAML: {e}") from None
    name = single_line(name) if name is not None else ""
    if not name:
        name = default_name
    description = single_line(description) if description is not None else ""
    short = single_line(short) if short is not None else None
    if not name:
        raise InvalidSkill("missing field `name`")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidSkill(f"invalid name: exceeds maximum length of {MAX_NAME_LENGTH} characters")
    if not description:
        raise InvalidSkill("missing field `description`")
    return {"name": name, "description": description, "shortDescription": short or None}


def default_skill_name(directory_name: str | None) -> str:
    name = single_line(directory_name or "")
    return name or "skill"


# agents/openai.yaml


def skill_metadata(contents: str | None) -> dict:
    """
    The C{dependencies} and C{policy} of a skill's metadata file; each is
    C{None} where it is missing or not as the reference accepts it.
    """
    members = _mapping(_compose(contents)) if contents is not None else None
    if members is None:
        return {"dependencies": None, "policy": None}
    return {"dependencies": _dependencies(members.get("dependencies")),
            "policy": _policy(members.get("policy"))}


def _policy(node: yaml.Node | None) -> dict | None:
    members = _mapping(node)
    if members is None:
        return None
    allow = members.get("allow_implicit_invocation")
    if _is_null(allow):
        allowed = None
    elif isinstance(allow, yaml.ScalarNode) and allow.style is None and allow.value in _TRUE + _FALSE:
        allowed = allow.value in _TRUE
    else:
        return None
    products_node = members.get("products")
    products = []
    if not _is_null(products_node):
        if not isinstance(products_node, yaml.SequenceNode):
            return None
        for item in products_node.value:
            if not isinstance(item, yaml.ScalarNode) or item.value.lower() not in PRODUCTS \
                    or item.value not in (item.value.lower(), item.value.upper()):
                return None
            products.append(item.value.lower())
    return {"allowImplicitInvocation": allowed, "products": products}


_TOOL_FIELDS = ("description", "transport", "command", "url")


def _dependencies(node: yaml.Node | None) -> dict | None:
    members = _mapping(node)
    tools_node = members.get("tools") if members is not None else None
    if not isinstance(tools_node, yaml.SequenceNode):
        return None
    tools = [tool for tool in map(_tool, tools_node.value) if tool is not None]
    return {"tools": tools} if tools else None


def _tool(node: yaml.Node) -> dict | None:
    members = _mapping(node)
    if members is None:
        return None
    try:
        kind = single_line(_text(members.get("type")) or "")
        value = single_line(_text(members.get("value")) or "")
        tool = {"type": kind, "value": value}
        for field in _TOOL_FIELDS:
            text = _text(members.get(field))
            tool[field] = single_line(text) or None if text is not None else None
    except ValueError:
        return None
    if not kind or not value:
        return None
    tool["oauthCallbackPort"] = _callback_port(members.get("oauth"))
    return tool


def _callback_port(node: yaml.Node | None) -> int | None:
    members = _mapping(node)
    port = members.get("callback_port") if members is not None else None
    if isinstance(port, yaml.ScalarNode) and port.style is None and port.value.isdigit():
        number = int(port.value)
        return number if number <= 0xFFFF else None
    return None
