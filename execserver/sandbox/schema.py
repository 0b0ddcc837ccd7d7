"""
The optional C{sandbox} of C{process/start} and the C{fs/*} methods: its
schema, decoded with serde's texts, and whether it restricts file system
access (then the operation runs under bubblewrap, see L{policy}); one that
restricts nothing (disabled, external, unrestricted, or write access to the
whole disk) lets file system work run in place, as in the reference.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from execserver import params as P
from execserver import paths, rpc

PathUri = P.Custom(paths.parse_uri)


# The sandbox's permission profile is a tree of internally tagged enums.
# serde buffers such a value before it decodes it, and errors about buffered
# values name numbers differently: C{integer `5`} rather than C{number}.


def _rust_float(value: float) -> str:
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text if "." in text else text + ".0"


def _buffered_unexpected(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (str, list, dict)):
        return P.unexpected(value)
    if isinstance(value, int):
        return f"integer `{value}`"
    return f"floating point `{_rust_float(value)}`"


def _buffered_type_error(value: Any, expected: str) -> P.DecodeError:
    return P.DecodeError(f"invalid type: {_buffered_unexpected(value)}, expected {expected}")


def _check_bufferable(value: Any) -> None:
    """
    serde cannot buffer integers beyond 64 bits.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item <= P.U64_MAX:
            kind = "u128" if item > 0 else "i128"
            raise P.DecodeError(f"invalid type: integer `{item}` as {kind}, expected any value")


class _Buffered(P.Type):
    """
    Decode C{inner} from a buffered value: type errors name the value as
    serde's buffer does.
    """

    def __init__(self, inner: P.Type) -> None:
        self.inner = inner
        self.expecting = inner.expecting

    def decode(self, value: Any) -> Any:
        if isinstance(self.inner, P.Optional):
            return None if value is None else _Buffered(self.inner.inner).decode(value)
        if isinstance(self.inner, P.Enum):
            if not isinstance(value, (str, dict)):
                raise _buffered_type_error(value, "string or map")
            if isinstance(value, dict) and len(value) == 1:
                ((name, content),) = value.items()
                variant = self.inner.decode(name)
                if content is not None:
                    raise _buffered_type_error(content, "unit")
                return variant
            return self.inner.decode(value)
        if isinstance(self.inner, P.Seq):
            if not isinstance(value, list):
                raise _buffered_type_error(value, "a sequence")
            return [_Buffered(self.inner.item).decode(item) for item in value]
        if isinstance(self.inner, (P.Custom, P.String)):
            if not isinstance(value, str):
                raise _buffered_type_error(value, "a string")
            return self.inner.decode(value)
        return self.inner.decode(value)


class _NonZeroUsize(P.Type):
    expecting = "a nonzero usize"

    def decode(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise P.DecodeError(f"invalid value: integer `{value}`, expected {self.expecting}")
            return value
        raise _buffered_type_error(value, self.expecting)


class _BufferedStruct(P.Type):
    """
    A struct (or struct variant) decoded from a buffered map or sequence.
    """

    def __init__(self, name: str, fields: list[P.Field]) -> None:
        self.expecting = name
        self.fields = fields
        self.by_name = {field.name: field for field in fields}

    def decode(self, value: Any) -> dict:
        if isinstance(value, list):
            return self.decode_sequence(value)
        if not isinstance(value, dict):
            raise _buffered_type_error(value, self.expecting)
        return self.decode_map(value)

    def decode_map(self, value: dict) -> dict:
        result = {}
        for key, item in value.items():
            field = self.by_name.get(key)
            if field is not None:
                result[key] = _Buffered(field.type).decode(item)
        for field in self.fields:
            if field.name not in result:
                if field.required:
                    raise P.DecodeError(f"missing field `{field.name}`")
                result[field.name] = field.default
        return result

    def decode_sequence(self, items: list) -> dict:
        result = {}
        for index, field in enumerate(self.fields):
            if index < len(items):
                result[field.name] = _Buffered(field.type).decode(items[index])
            elif field.defaulted:
                result[field.name] = field.default
            else:
                raise P.DecodeError(
                    f"invalid length {index}, expected {self.expecting} with {_elements(len(self.fields))}"
                )
        _check_consumed(items, len(self.fields))
        return result


def _elements(count: int) -> str:
    return f"{count} element{'s' if count != 1 else ''}"


def _check_consumed(items: list, count: int) -> None:
    """
    serde's buffer refuses a sequence with elements left over.
    """
    if len(items) > count:
        raise P.DecodeError(f"invalid length {len(items)}, expected {_elements(count)} in sequence")


class _Tagged(P.Type):
    """
    An internally tagged enum, C{{"type": "managed", ...}}: the tag names
    the variant, the other members are the variant's fields. A sequence
    holds the tag first and then the fields in order.
    """

    def __init__(self, name: str, variants: dict[str, _BufferedStruct | None],
                 tag: str = "type", listed: list[str] | None = None, top: bool = False) -> None:
        self.expecting = f"internally tagged enum {name}"
        self.variants = variants
        self.tag = tag
        self.tag_type = P.Enum(name, listed or list(variants))
        #: At the top the tag is read from the JSON value itself; below it,
        #: from serde's buffer.
        self.top = top

    def _variant(self, tag_value: Any) -> str:
        if not isinstance(tag_value, str):
            unexpected = P.unexpected(tag_value) if self.top else _buffered_unexpected(tag_value)
            raise P.DecodeError(f"invalid type: {unexpected}, expected variant identifier")
        name = self.tag_type.decode(tag_value)
        return "project_roots" if name == "current_working_directory" else name

    def decode(self, value: Any) -> dict:
        if self.top:
            _check_bufferable(value)
        if isinstance(value, list):
            if not value:
                raise P.DecodeError(f"missing field `{self.tag}`")
            name = self._variant(value[0])
            fields = self.variants[name]
            if fields is None:
                _check_consumed(value[1:], 0)
                content = {}
            else:
                content = fields.decode_sequence(value[1:])
        elif isinstance(value, dict):
            name = None
            for key, item in value.items():
                if key == self.tag:
                    name = self._variant(item)
            if name is None:
                raise P.DecodeError(f"missing field `{self.tag}`")
            fields = self.variants[name]
            content = {} if fields is None else fields.decode_map(value)
        else:
            raise _buffered_type_error(value, self.expecting)
        content[self.tag] = name
        return content


def _struct_variant(enum: str, variant: str, fields: list[P.Field]) -> _BufferedStruct:
    return _BufferedStruct(f"struct variant {enum}::{variant}", fields)


SpecialPath = _Tagged("FileSystemSpecialPath", {
    "root": None,
    "minimal": None,
    "project_roots": _struct_variant("FileSystemSpecialPath", "ProjectRoots", [
        P.Field("subpath", P.Optional(P.String()), default=None),
    ]),
    "tmpdir": None,
    "slash_tmp": None,
    "unknown": _struct_variant("FileSystemSpecialPath", "Unknown", [
        P.Field("path", P.String()),
        P.Field("subpath", P.Optional(P.String()), default=None),
    ]),
}, tag="kind", listed=["root", "minimal", "current_working_directory", "project_roots",
                       "tmpdir", "slash_tmp", "unknown"])

SandboxPath = _Tagged("ExecFileSystemPath", {
    "path": _struct_variant("ExecFileSystemPath", "Path", [P.Field("path", PathUri)]),
    "glob_pattern": _struct_variant("ExecFileSystemPath", "GlobPattern", [P.Field("pattern", P.String())]),
    "special": _struct_variant("ExecFileSystemPath", "Special", [P.Field("value", SpecialPath)]),
})

SandboxEntry = _BufferedStruct("struct ExecFileSystemSandboxEntry", [
    P.Field("path", SandboxPath),
    P.Field("access", P.Enum("FileSystemAccessMode", ["read", "write", "deny", "none"],
                             aliases={"none": "deny"})),
    P.Field("missing_path_behavior", P.Optional(P.Enum("MissingPathBehavior", ["skip"])), default=None),
])

ManagedFileSystem = _Tagged("ExecManagedFileSystemPermissions", {
    "restricted": _struct_variant("ExecManagedFileSystemPermissions", "Restricted", [
        P.Field("entries", P.Seq(SandboxEntry)),
        P.Field("glob_scan_max_depth", P.Optional(_NonZeroUsize()), default=None),
    ]),
    "unrestricted": None,
})

Network = P.Enum("NetworkSandboxPolicy", ["restricted", "enabled"])

PermissionProfile = _Tagged("ExecPermissionProfile", {
    "managed": _struct_variant("ExecPermissionProfile", "Managed", [
        P.Field("file_system", ManagedFileSystem),
        P.Field("network", Network),
    ]),
    "disabled": None,
    "external": _struct_variant("ExecPermissionProfile", "External", [P.Field("network", Network)]),
}, top=True)

PolicyContext = P.Struct("WireFileSystemPolicyContext", [
    P.Field("cwd", P.Optional(PathUri), default=None),
    P.Field("workspaceRoots", P.Seq(PathUri), default=[]),
])

SandboxContext = P.Struct("WireFileSystemSandboxContext", [
    P.Field("permissions", PermissionProfile),
    P.Field("sandboxOverride", P.Enum("SandboxOverride", [
        "noOverride", "escalatedSandboxWithRestrictions", "bypassSandboxFirstAttempt",
    ]), default="noOverride"),
    P.Field("cwd", P.Optional(PathUri), default=None),
    P.Field("policyContext", P.Optional(PolicyContext), default=None),
    P.Field("workspaceRoots", P.Seq(PathUri), default=[]),
    P.Field("userHomeDir", P.Optional(PathUri), default=None),
    P.Field("temporaryDirectories", P.Optional(P.Seq(PathUri)), default=None),
    P.Field("windowsSandboxLevel", P.Enum("WindowsSandboxLevel", [
        "disabled", "restricted-token", "elevated", "mxc",
    ])),
    P.Field("windowsSandboxProxySettingsMode", P.Optional(P.Enum(
        "WindowsSandboxProxySettingsMode", ["reconcile", "preserve"])), default=None),
    P.Field("useLegacyLandlock", P.Bool(), default=False),
])


def restricts(sandbox: dict | None) -> bool:
    """
    Check a sandbox as the reference does before it runs an operation, and
    say whether it restricts file system access.

    A managed profile whose file system is restricted restricts unless it
    grants write access to the whole disk with nothing narrower.

    @raise rpc.RpcError: the context names foreign paths, or needs a cwd.
    """
    if sandbox is None:
        return False
    permissions = sandbox["permissions"]
    if permissions["type"] != "managed" or permissions["file_system"]["type"] != "restricted":
        return False
    entries = permissions["file_system"]["entries"]
    cwd = sandbox["cwd"]
    if cwd is None and sandbox["policyContext"] is not None:
        cwd = sandbox["policyContext"]["cwd"]
    dynamic = any(
        entry["path"]["type"] == "glob_pattern"
        or (entry["path"]["type"] == "special"
            and entry["path"]["value"]["kind"] == "project_roots")
        for entry in entries
    )
    if dynamic and cwd is None:
        raise rpc.invalid_params("file system sandbox context with dynamic permissions requires cwd")
    whole_disk_writable = False
    for entry in entries:
        where = entry["path"]
        if where["type"] == "path":
            try:
                host_path = paths.to_host_path(where["path"])
            except paths.ForeignPathError as e:
                raise rpc.invalid_request(f"invalid sandbox permission path URI: {e}") from None
            is_root = host_path == b"/"
        else:
            is_root = where["type"] == "special" and where["value"]["kind"] == "root"
        whole_disk_writable = whole_disk_writable or (is_root and entry["access"] == "write")
    if dynamic:
        try:
            paths.to_host_path(cwd)
        except paths.ForeignPathError as e:
            raise rpc.invalid_request(str(e)) from None
    return not (whole_disk_writable and all(entry["access"] == "write" for entry in entries))
