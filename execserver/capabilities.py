"""
C{capabilityRoots/discoverV1}: find and read the skills and plugin
manifests below capability roots, as the reference does.

Below each root (walked at most L{MAX_SCAN_DEPTH} deep, following directory
links), every C{SKILL.md} is a skill, read with the C{agents/openai.yaml}
beside it; every C{plugin.json} in one of L{PLUGIN_MANIFEST_PATHS}' folders
names a plugin namespace. A root that holds such a manifest itself is a
plugin, read with its MCP and apps configuration. Files are returned as
text; unreadable ones become warnings. Reads are bounded per file and per
root.

Everything here blocks: the handler runs it in the thread pool.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet.defer import Deferred

from execserver import fsops, oserrors
from execserver import params as P
from execserver import paths, rpc, sandbox
from execserver.sandbox import runner
from execserver.server import Method, ServerConnection

FAMILY = "capability discovery"

#: At most this many roots per request.
MAX_ROOTS_PER_REQUEST = 128
#: The walk below each root.
MAX_SCAN_DEPTH = 6
MAX_DIRECTORIES_PER_ROOT = 2_000
MAX_ENTRIES_PER_ROOT = 20_000
#: No file larger than this is read.
MAX_FILE_BYTES = 1024 * 1024
#: The files read for one root, together.
MAX_BUNDLE_BYTES_PER_ROOT = 16 * 1024 * 1024

SKILL_FILE_NAME = "SKILL.md"
SKILL_METADATA_PATH = ("agents", "openai.yaml")
DEFAULT_MCP_CONFIG_PATH = (".mcp.json",)
#: Where a plugin root keeps its manifest, in order of preference.
PLUGIN_MANIFEST_PATHS = (
    (".codex-plugin", "plugin.json"),
    (".claude-plugin", "plugin.json"),
    (".cursor-plugin", "plugin.json"),
)
_MANIFEST_FOLDERS = tuple(folder for folder, _ in PLUGIN_MANIFEST_PATHS)

RootRequest = P.Struct("WireCapabilityRootDiscoverRequest", [
    P.Field("id", P.String()),
    P.Field("path", sandbox.PathUri),
    P.Field("sandbox", P.Optional(sandbox.SandboxContext)),
])

DiscoverV1Params = P.Struct("WireCapabilityRootsDiscoverParams", [
    P.Field("roots", P.Seq(RootRequest)),
])


# URIs as the reference's PathUri handles them. Discovery works on URIs:
# paths come from the walk, which spells them as the reference does.


def uri_parent(uri: str) -> str | None:
    body = uri[len("file://"):].rstrip("/")
    if not body:
        return None
    parent = body[:body.rindex("/")]
    return "file://" + (parent or "/")


def uri_basename(uri: str) -> str | None:
    body = uri[len("file://"):].rstrip("/")
    return body[body.rindex("/") + 1:] if body else None


def uri_join(uri: str, *names: str) -> str:
    for name in names:
        uri = paths.child_uri(uri, name.encode("utf-8"))
    return uri


def _manifest_priority(uri: str) -> int | None:
    if uri_basename(uri) != "plugin.json":
        return None
    parent = uri_parent(uri)
    folder = uri_basename(parent) if parent is not None else None
    return _MANIFEST_FOLDERS.index(folder) if folder in _MANIFEST_FOLDERS else None


def plugin_root_of(manifest_uri: str) -> str | None:
    parent = uri_parent(manifest_uri)
    return uri_parent(parent) if parent is not None else None


def utf8_error(data: bytes) -> str | None:
    """
    Rust's text for the first UTF-8 error in C{data}, if any.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            return f"incomplete utf-8 byte sequence from index {e.start}"
        return f"invalid utf-8 sequence of {e.end - e.start} bytes from index {e.start}"
    return None


class Reader:
    """
    Reads the text files of one root within its byte budget, collecting
    warnings.
    """

    def __init__(self, warnings: list[str]) -> None:
        self.warnings = warnings
        self.spent = 0

    def read(self, uri: str) -> dict | None:
        """
        The file's C{{path, contents}}, or C{None} if it is missing, not a
        regular file, or unreadable (then with a warning).
        """
        try:
            path = paths.to_host_path(uri)
            status = os.stat(path)
        except FileNotFoundError:
            return None
        except paths.ForeignPathError as e:
            self.warnings.append(f"failed to inspect capability file {uri}: {e}")
            return None
        except OSError as e:
            self.warnings.append(f"failed to inspect capability file {uri}: {oserrors.describe(e)}")
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        if status.st_size > MAX_FILE_BYTES:
            self.warnings.append(f"capability file {uri} exceeds the {MAX_FILE_BYTES}-byte limit")
            return None
        if self.spent + status.st_size > MAX_BUNDLE_BYTES_PER_ROOT:
            self.warnings.append(
                f"capability root bundle exceeds the {MAX_BUNDLE_BYTES_PER_ROOT}-byte limit")
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                data = os.read(fd, MAX_FILE_BYTES + 1)
                while data and len(data) <= MAX_FILE_BYTES:
                    more = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
                    if not more:
                        break
                    data += more
            finally:
                os.close(fd)
        except OSError as e:
            self.warnings.append(f"failed to read capability file {uri}: {oserrors.describe(e)}")
            return None
        if len(data) > MAX_FILE_BYTES or self.spent + len(data) > MAX_BUNDLE_BYTES_PER_ROOT:
            self.warnings.append(f"capability file {uri} exceeded its read limit")
            return None
        problem = utf8_error(data)
        if problem is not None:
            self.warnings.append(f"capability file {uri} is not UTF-8: {problem}")
            return None
        self.spent += len(data)
        return {"path": uri, "contents": data.decode("utf-8")}

    def first_manifest(self, root: str) -> dict | None:
        for relative in PLUGIN_MANIFEST_PATHS:
            manifest = self.read(uri_join(root, *relative))
            if manifest is not None:
                return manifest
        return None


class _Declarations:
    """
    The C{mcpServers} and C{apps} members of a plugin manifest, as serde
    reads them into optional JSON values (C{None} if the manifest does not
    read that way).
    """

    def __init__(self, text: str) -> None:
        self.mcp_servers: Any = None
        self.apps: Any = None
        try:
            value = json.loads(text, object_pairs_hook=_unique_declarations,
                               parse_constant=_refuse_constant)
        except ValueError:
            return
        if isinstance(value, dict):
            self.mcp_servers = value.get("mcpServers")
            self.apps = value.get("apps")
        elif isinstance(value, list) and len(value) <= 2:
            # serde reads a struct from a sequence of its fields too.
            self.mcp_servers, self.apps = (value + [None, None])[:2]


def _unique_declarations(pairs: list) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in ("mcpServers", "apps") and key in seen:
            raise ValueError(f"duplicate field `{key}`")
        seen.add(key)
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _declared_file(root: str, field: str, value: Any, manifest: str,
                   warnings: list[str]) -> str | None:
    if not isinstance(value, str):
        return None
    if not value.startswith("./"):
        warnings.append(f"ignoring {field} in {manifest}: path must start with `./`")
        return None
    relative = value[2:]
    parts = relative.replace("\\", "/").split("/")
    if not relative or ".." in parts or relative.startswith("/"):
        warnings.append(f"ignoring {field} in {manifest}: path must remain below the capability root")
        return None
    return uri_join(root, *(part for part in relative.split("/") if part))


def _walk(root: str, host_root: bytes) -> dict:
    return fsops.walk(root, host_root, {
        "maxDepth": MAX_SCAN_DEPTH,
        "maxDirectories": MAX_DIRECTORIES_PER_ROOT,
        "maxEntries": MAX_ENTRIES_PER_ROOT,
        "followDirectorySymlinks": True,
        "pruneHiddenDirectories": False,
    })


def discover_root(root_id: str, root: str, restriction: str | None = None) -> dict:
    """
    One root's discovery: its plugin, skills, namespace manifests and
    warnings, or the error that stopped it.
    """
    warnings: list[str] = []
    discovery = {"id": root_id, "path": root, "plugin": None, "skills": [],
                 "namespaceManifests": [], "warnings": warnings, "error": None}
    try:
        if restriction is not None:
            raise _Refused(restriction)
        host_root = paths.to_host_path(root)
        is_directory = stat.S_ISDIR(os.stat(host_root).st_mode)
    except (paths.ForeignPathError, _Refused) as e:
        discovery["error"] = f"failed to inspect capability root {root}: {e}"
        return discovery
    except OSError as e:
        discovery["error"] = f"failed to inspect capability root {root}: {oserrors.describe(e)}"
        return discovery
    if not is_directory:
        discovery["error"] = f"capability root {root} is not a directory"
        return discovery
    try:
        walk = _walk(root, host_root)
    except OSError as e:
        discovery["error"] = f"failed to scan capability root {root}: {oserrors.describe(e)}"
        return discovery
    warnings.extend(f"failed to scan capability path {error['path']}: {error['message']}"
                    for error in walk["errors"])
    if walk["truncated"]:
        warnings.append(f"capability scan reached its traversal limit (root: {root})")

    files = [path for path, kind in zip(walk["paths"], walk["kinds"]) if kind == "file"]
    skill_paths = sorted(uri for uri in files if uri_basename(uri) == SKILL_FILE_NAME)
    manifest_paths = sorted(
        (uri for uri in files if _manifest_priority(uri) is not None),
        key=lambda uri: (plugin_root_of(uri), _manifest_priority(uri)),
    )

    reader = Reader(warnings)
    root_manifest = reader.first_manifest(root)
    inherited = root_manifest
    ancestor = uri_parent(root)
    while inherited is None and ancestor is not None:
        inherited = reader.first_manifest(ancestor)
        ancestor = uri_parent(ancestor)
    namespace_roots = set()
    if inherited is not None:
        namespace_roots.add(plugin_root_of(inherited["path"]))
        discovery["namespaceManifests"].append(inherited)
    for manifest_path in manifest_paths:
        plugin_root = plugin_root_of(manifest_path)
        if plugin_root in namespace_roots:
            continue
        namespace_roots.add(plugin_root)
        manifest = reader.read(manifest_path)
        if manifest is not None:
            discovery["namespaceManifests"].append(manifest)

    if root_manifest is not None:
        discovery["plugin"] = _plugin_files(root, root_manifest, reader)

    for skill_path in skill_paths:
        instructions = reader.read(skill_path)
        if instructions is None:
            continue
        metadata = reader.read(uri_join(uri_parent(skill_path), *SKILL_METADATA_PATH))
        discovery["skills"].append({"instructions": instructions, "metadata": metadata})
    return discovery


class _Refused(Exception):
    pass


def _plugin_files(root: str, manifest: dict, reader: Reader) -> dict:
    declared = _Declarations(manifest["contents"])
    mcp_path = _declared_file(root, "mcpServers", declared.mcp_servers, manifest["path"], reader.warnings)
    apps_path = _declared_file(root, "apps", declared.apps, manifest["path"], reader.warnings)
    if isinstance(declared.mcp_servers, dict):
        # Servers declared inline: there is no file to read.
        mcp_path = None
    elif mcp_path is None:
        mcp_path = uri_join(root, *DEFAULT_MCP_CONFIG_PATH)
    return {
        "manifest": manifest,
        "mcpConfig": reader.read(mcp_path) if mcp_path is not None else None,
        "appsConfig": reader.read(apps_path) if apps_path is not None else None,
    }


#: Why discovery under a sandbox that restricts reads is refused: it reads
#: in place, not in a confined helper.
READS_RESTRICTED = ("sandbox intent cannot be enforced on this executor: capability "
                    "discovery under a sandbox that restricts reads is not supported")


def refusal(context: dict | None) -> str | None:
    """
    Why discovery cannot be served under the sandbox C{context}, if it
    cannot: only a context that lets it read everything is served.
    """
    if not sandbox.restricts(context):
        return None
    try:
        plan = runner.sandboxing.plan(context, True, helper=True)
    except runner.SandboxUnavailable as e:
        return str(e)
    return None if plan.reads_everything else READS_RESTRICTED


def discover_roots(roots: list[tuple[str, str, str | None]]) -> dict:
    return {"roots": [discover_root(*root) for root in roots]}


def handle_discover_v1(connection: ServerConnection, p: dict) -> Deferred:
    if len(p["roots"]) > MAX_ROOTS_PER_REQUEST:
        raise rpc.invalid_request(
            f"capability root discovery accepts at most {MAX_ROOTS_PER_REQUEST} roots")
    roots = [(root["id"], root["path"], refusal(root["sandbox"])) for root in p["roots"]]
    return connection.server.run_blocking(discover_roots, roots)


METHODS = {
    "capabilityRoots/discoverV1": Method(FAMILY, DiscoverV1Params, handle_discover_v1),
}
