"""
C{capabilities/discoverV2}: the skills and plugins installed on this
executor, with their metadata read, as the reference finds them
(docs/reference/methods.md).

The locations are fixed; the request's C{cwd} does not add any:

 - C{$CODEX_HOME/skills}, C{~/.agents/skills} and C{/etc/codex/skills}:
   standalone skills, each reported with the root it was found in;
 - C{$CODEX_HOME/plugins/cache/<marketplace>/<plugin>/<version>}: installed
   plugins, one version each (C{local} if present, else the highest).

Each location is discovered as C{capabilityRoots/discoverV1} discovers a
root; then skill front matter and metadata are read, and skills below a
plugin manifest take its name as their namespace (C{namespace:skill}).
Problems become one warning per location. Everything here blocks: the
handler runs it in the thread pool.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import urllib.parse

from twisted.internet.defer import Deferred

from execserver import capabilities, envconfig, environment
from execserver import params as P
from execserver import paths, rpc, sandbox, skillfiles
from execserver.server import Method, ServerConnection

PLUGINS_CACHE = ("plugins", "cache")
REMOTE_INSTALL_METADATA = ".codex-remote-plugin-install.json"
DEFAULT_PLUGIN_VERSION = "local"
#: At most this many skills and plugins per answer.
MAX_CAPABILITIES = 2_048
MAX_WARNINGS = 64
MAX_PLUGIN_LOCATIONS = 512
MAX_REMOTE_INSTALL_METADATA_BYTES = 16 * 1024
MAX_REMOTE_PLUGIN_ID_BYTES = 1024

LOCATIONS_INCOMPLETE = "some capability locations could not be resolved; discovery may be incomplete"
METADATA_INCOMPLETE = "some capability metadata could not be loaded; discovery may be incomplete"
SIZE_LIMIT = "capability discovery size limit reached"

_PLUGIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MARKETPLACE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_VERSION_SEGMENT = re.compile(r"[A-Za-z0-9._+-]+")
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?")

#: Like the other methods' sandbox context, but the working directory is
#: required.
SandboxContext = P.Struct("FileSystemSandboxContext", [
    P.Field("cwd", sandbox.PathUri) if field.name == "cwd" else field
    for field in sandbox.SandboxContext.fields
])

DiscoverV2Params = P.Struct("DiscoverV2CapabilitiesRequest", [
    P.Field("cwd", sandbox.PathUri),
    P.Field("sandbox", P.Optional(SandboxContext), default=None),
])


# Plugin versions


def _semver_key(version: str) -> tuple | None:
    match = _SEMVER.fullmatch(version)
    if match is None:
        return None
    major, minor, patch, pre, build = match.groups()
    # A release sorts after its pre-releases; numeric identifiers before others.
    pre_key = (1,) if pre is None else (0, *[(0, int(p), "") if p.isdigit() else (1, 0, p)
                                          for p in pre.split(".")])
    build_key = tuple((0, int(b), "") if b.isdigit() else (1, 0, b) for b in (build or "").split(".") if b)
    return int(major), int(minor), int(patch), pre_key, build_key


def _compare_versions(left: str, right: str) -> int:
    left_key, right_key = _semver_key(left), _semver_key(right)
    if left_key is None or right_key is None:
        left_key, right_key = left, right
    return (left_key > right_key) - (left_key < right_key)


def active_version(package_root: str) -> str | None:
    """
    The installed version of a plugin package: C{local} if there is one,
    else the highest (semantic versions by precedence, others by name).
    """
    try:
        entries = list(os.scandir(package_root))
    except OSError:
        return None
    versions = [entry.name for entry in entries
                if entry.is_dir(follow_symlinks=False) and entry.name not in (".", "..")
                and _VERSION_SEGMENT.fullmatch(entry.name)]
    if not versions:
        return None
    if DEFAULT_PLUGIN_VERSION in versions:
        return DEFAULT_PLUGIN_VERSION
    return sorted(versions, key=functools.cmp_to_key(_compare_versions))[-1]


def _remote_plugin_id(package_root: str) -> str | None:
    """
    @raise ValueError: if the package's installation metadata is unusable.
    """
    path = os.path.join(package_root, REMOTE_INSTALL_METADATA)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(str(e)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, MAX_REMOTE_INSTALL_METADATA_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_REMOTE_INSTALL_METADATA_BYTES:
        raise ValueError("remote installation metadata exceeds its byte limit")
    metadata = json.loads(data.decode("utf-8"))
    if not isinstance(metadata, dict) or metadata.get("schema_version") != 1:
        raise ValueError("unsupported remote plugin install metadata")
    remote_id = metadata.get("remote_plugin_id")
    if not isinstance(remote_id, str) or not remote_id.strip():
        raise ValueError("remote plugin id must not be blank")
    remote_id = remote_id.strip()
    if len(remote_id.encode("utf-8")) > MAX_REMOTE_PLUGIN_ID_BYTES:
        raise ValueError("remote plugin ID exceeds its byte limit")
    return remote_id


def installed_plugins(cache: str) -> tuple[list[dict], bool]:
    """
    The plugin locations in the cache, and whether some could not be
    resolved.
    """
    packages = {}
    incomplete = False
    try:
        marketplaces = sorted(os.scandir(cache), key=lambda entry: entry.name)
    except FileNotFoundError:
        return [], False
    except OSError:
        return [], True
    for marketplace in marketplaces:
        if not marketplace.is_dir():
            continue
        try:
            names = list(os.scandir(marketplace.path))
        except OSError:
            incomplete = True
            continue
        for name in names:
            if (name.is_dir() and _PLUGIN_NAME.fullmatch(name.name)
                    and _MARKETPLACE_NAME.fullmatch(marketplace.name)):
                packages[f"{name.name}@{marketplace.name}"] = name.path
    locations = []
    for plugin_id, package_root in sorted(packages.items()):
        version = active_version(package_root)
        if version is None:
            continue
        if len(locations) == MAX_PLUGIN_LOCATIONS:
            incomplete = True
            break
        try:
            remote_id = _remote_plugin_id(package_root)
        except (ValueError, OSError):
            incomplete = True
            remote_id = None
        locations.append({"root": os.path.join(package_root, version),
                          "plugin": {"id": plugin_id, "version": version, "remotePluginId": remote_id}})
    return locations, incomplete


# One location


def _namespaces(manifests: list[dict]) -> dict[str, str]:
    """
    Each plugin root's namespace: its manifest's name, or the root's own
    name; the first manifest of a root wins.
    """
    namespaces: dict[str, str] = {}
    for manifest in manifests:
        root = capabilities.plugin_root_of(manifest["path"])
        name = _manifest_name(manifest["contents"])
        if root is None or name is None:
            continue
        if not name.strip():
            name = _name_of(root)
            if not name:
                continue
        namespaces.setdefault(root, name)
    return namespaces


def _name_of(uri: str) -> str:
    """
    The last segment of a URI, decoded.
    """
    return urllib.parse.unquote(capabilities.uri_basename(uri) or "", errors="replace")


def _manifest_name(contents: str) -> str | None:
    try:
        value = json.loads(contents)
    except ValueError:
        return None
    if isinstance(value, dict):
        name = value.get("name", "")
    elif isinstance(value, list):
        name = value[0] if value else ""
    else:
        return None
    return name if isinstance(name, str) else None


def _skills(found: dict, namespaces: dict[str, str], warnings: list[str],
            discovery_root: dict | None) -> list[dict]:
    skills = []
    for entry in found["skills"]:
        path = entry["instructions"]["path"]
        directory = capabilities.uri_parent(path)
        try:
            parsed = skillfiles.parse_skill(
                entry["instructions"]["contents"],
                skillfiles.default_skill_name(_name_of(directory) if directory else None))
        except skillfiles.InvalidSkill:
            warnings.append(f"invalid skill metadata at {path}")
            continue
        name = parsed["name"]
        ancestor = directory
        while ancestor is not None:
            namespace = namespaces.get(ancestor)
            if namespace is not None:
                if len(namespace) + 1 + len(name) > skillfiles.MAX_QUALIFIED_NAME_LENGTH:
                    warnings.append(f"invalid skill metadata at {path}: qualified name too long")
                    name = None
                else:
                    name = f"{namespace}:{name}"
                break
            ancestor = capabilities.uri_parent(ancestor)
        if name is None:
            continue
        metadata = skillfiles.skill_metadata(entry["metadata"]["contents"] if entry["metadata"] else None)
        skill = {"name": name, "description": parsed["description"],
                 "shortDescription": parsed["shortDescription"], "path": path}
        if discovery_root is not None:
            skill["discoveryRoot"] = discovery_root
        skill.update(metadata)
        skills.append(skill)
    return skills


def discover_location(root: str, plugin: dict | None, root_id: str = "") -> tuple[dict | list, bool]:
    """
    A location's plugin (or its standalone skills), and whether anything in
    it could not be loaded.
    """
    try:
        status = os.stat(root)
    except (FileNotFoundError, PermissionError):
        return [], False
    except OSError:
        return [], True
    if not stat.S_ISDIR(status.st_mode):
        return [], False
    uri = paths.from_host_path(root)
    found = capabilities.discover_root(plugin["id"] if plugin else "", uri)
    warnings = list(found["warnings"])
    if found["error"] is not None:
        warnings.append(found["error"])
    if plugin is not None and found["plugin"] is None:
        return [], True
    namespaces = _namespaces(found["namespaceManifests"])
    if plugin is None:
        skills = _skills(found, namespaces, warnings, {"id": root_id, "path": uri})
        return skills, bool(warnings)
    display_name = namespaces.get(uri)
    if display_name is None:
        return [], True
    skills = _skills(found, namespaces, warnings, None)
    return {"id": plugin["id"], "displayName": display_name, "remotePluginId": plugin["remotePluginId"],
            "version": plugin["version"], "root": uri, "files": found["plugin"], "skills": skills}, bool(warnings)


# The request


def skill_locations(codex_home: str | None) -> list[tuple[str, str]]:
    locations = []
    if codex_home is not None:
        locations.append(("codex-home-skills", os.path.join(codex_home, "skills")))
    home = environment.home_directory()
    if home is not None:
        locations.append(("user-agent-skills", os.path.join(home, ".agents", "skills")))
    locations.append(("system-skills", os.path.join(envconfig.SYSTEM_DIRECTORY, "skills")))
    return locations


def discover() -> dict:
    try:
        codex_home = envconfig.codex_home()
    except envconfig.ConfigError:
        codex_home = None
    response: dict = {"plugins": [], "skills": [], "warnings": []}
    plugins, incomplete = ([], True) if codex_home is None else installed_plugins(
        os.path.join(codex_home, *PLUGINS_CACHE))
    if incomplete:
        response["warnings"].append(LOCATIONS_INCOMPLETE)
    count = 0
    truncated = False
    for location in plugins:
        found, problems = discover_location(location["root"], location["plugin"])
        if problems:
            response["warnings"].append(METADATA_INCOMPLETE)
        if found:
            if count + 1 + len(found["skills"]) > MAX_CAPABILITIES:
                truncated = True
                break
            count += 1 + len(found["skills"])
            response["plugins"].append(found)
    for root_id, root in skill_locations(codex_home):
        found, problems = discover_location(root, None, root_id)
        if problems:
            response["warnings"].append(METADATA_INCOMPLETE)
        for skill in found:
            if count == MAX_CAPABILITIES:
                truncated = True
                break
            count += 1
            response["skills"].append(skill)
    response["plugins"].sort(key=lambda plugin: (plugin["id"], plugin["root"]))
    if truncated:
        response["warnings"] = [SIZE_LIMIT] + response["warnings"][:MAX_WARNINGS - 1]
    else:
        response["warnings"] = response["warnings"][:MAX_WARNINGS]
    return response


def handle_discover_v2(connection: ServerConnection, p: dict) -> Deferred:
    refused = capabilities.refusal(p["sandbox"])
    if refused is not None:
        raise rpc.invalid_request(refused)
    return connection.server.run_blocking(discover)


METHODS = {
    "capabilities/discoverV2": Method(capabilities.FAMILY, DiscoverV2Params, handle_discover_v2),
}
