"""
C{environmentConfig/read}: the executor's own codex configuration, layer by
layer, reduced to the TOML paths the client asks for.

The layers are the reference's (docs/reference/methods.md), lowest
precedence first:

 - system: C{/etc/codex/config.toml}
 - user: C{$CODEX_HOME/config.toml}
 - project: C{.codex/config.toml} of each directory from the project root
   down to C{cwd}, in trusted projects only, without the keys a project may
   not set
 - legacy managed: C{/etc/codex/managed_config.toml}

and the requirements: C{/etc/codex/requirements.toml}, then what the legacy
managed file requires. A missing file is an empty layer; a layer with none
of the asked paths is left out. Each layer comes back as TOML text, spelled
as the reference's toml crate spells it.

The project root is the nearest ancestor of C{cwd} holding a marker
(C{project_root_markers}, by default a C{.git} that is a repository); a
directory is trusted when the C{projects} table of the system, user or
managed configuration marks it, its project root or its repository
C{trust_level = "trusted"}.

Everything here blocks: the handler runs it in the thread pool.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tomllib
from typing import Any

from twisted.internet.defer import Deferred

from execserver import environment, oserrors
from execserver import params as P
from execserver import paths, rpc, sandbox, tomlwriter
from execserver.server import Method, ServerConnection

FAMILY = "environment config"

SYSTEM_DIRECTORY = "/etc/codex"
SYSTEM_CONFIG = "/etc/codex/config.toml"
SYSTEM_REQUIREMENTS = "/etc/codex/requirements.toml"
MANAGED_CONFIG = "/etc/codex/managed_config.toml"
CONFIG_FILE = "config.toml"
DOT_CODEX = ".codex"
DEFAULT_PROJECT_ROOT_MARKERS = (".git",)
#: Keys a project's own configuration may not set: where credentials go
#: and which local commands run are not the repository's to choose.
PROJECT_DENYLIST = (
    "openai_base_url", "chatgpt_base_url", "apps_mcp_product_sku", "model_provider",
    "model_providers", "notify", "profile", "profiles",
    "experimental_realtime_webrtc_call_base_url", "experimental_realtime_ws_base_url", "otel",
)
PROJECT_FEATURE_DENYLIST = ("respect_system_proxy",)

ReadParams = P.Struct("EnvironmentConfigReadParams", [
    P.Field("cwd", sandbox.PathUri),
    P.Field("configPaths", P.Seq(P.Seq(P.String()))),
    P.Field("requirementsPaths", P.Seq(P.Seq(P.String()))),
])


class ConfigError(Exception):
    """
    The configuration cannot be loaded; the text follows
    C{failed to load executor-local config: }.
    """


# The legacy managed file's settings, as requirements.

_APPROVAL_POLICIES = ["untrusted", "on-failure", "on-request", "granular", "never"]
_APPROVALS_REVIEWERS = ["user", "auto_review", "guardian_subagent"]
_SANDBOX_MODES = ["read-only", "workspace-write", "danger-full-access"]


def _variant(table: dict, key: str, variants: list[str]) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError("Failed to parse config requirements as TOML: invalid type: unit variant, "
                          f"expected string only\nin `{key}`\n")
    if value not in variants or value == "granular":
        expected = ", ".join(f"`{name}`" for name in variants)
        raise ConfigError(f"Failed to parse config requirements as TOML: unknown variant `{value}`, "
                          f"expected one of {expected}\nin `{key}`\n")
    return value


def legacy_requirements(managed: dict) -> dict:
    """
    What a legacy managed file's approval policy, reviewer and sandbox mode
    allow.
    """
    requirements: dict = {}
    policy = _variant(managed, "approval_policy", _APPROVAL_POLICIES)
    if policy is not None:
        requirements["allowed_approval_policies"] = ["on-request" if policy == "on-failure" else policy]
    reviewer = _variant(managed, "approvals_reviewer", _APPROVALS_REVIEWERS)
    if reviewer is not None:
        requirements["allowed_approvals_reviewers"] = (
            ["user"] if reviewer == "user" else ["auto_review", "user"])
    mode = _variant(managed, "sandbox_mode", _SANDBOX_MODES)
    if mode is not None:
        requirements["allowed_sandbox_modes"] = (
            ["read-only"] if mode == "read-only" else ["read-only", mode])
    return requirements


# Files


def _read_text(path: str) -> str | None:
    """
    The text of a configuration file, or C{None} if there is none.

    @raise ConfigError: if it cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _ReadError(oserrors.describe(e)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _ReadError(f"path `{path}` is not a file")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError as e:
        raise _ReadError(oserrors.describe(e)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _ReadError(f"invalid utf-8 sequence of {e.end - e.start} bytes from index {e.start}") from None


class _ReadError(Exception):
    pass


_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _parse(text: str) -> tuple[dict | None, tuple[int, int, str] | None]:
    """
    The document, or where and why it does not parse.
    """
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        match = _POSITION.search(message)
        line, column = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        reason = message[:match.start()] if match else message
        return None, (line, column, reason[:1].lower() + reason[1:])


def _snippet(text: str, problem: tuple[int, int, str]) -> str:
    """
    The toml crate's report of a parse error: position, source line, caret.
    """
    line, column, reason = problem
    lines = text.splitlines()
    source = lines[line - 1] if line <= len(lines) else ""
    gutter = " " * len(str(line))
    return (f"TOML parse error at line {line}, column {column}\n{gutter} |\n{line} | {source}\n"
            f"{gutter} | {' ' * (column - 1)}^\n{reason}\n")


def _config_file(path: str, required_layer: bool) -> dict | None:
    """
    A system, user or managed configuration file: an empty table (a
    required layer) or C{None} if it is missing.
    """
    try:
        text = _read_text(path)
    except _ReadError as e:
        raise ConfigError(f"Failed to read config file {path}: {e}" if required_layer else str(e)) from None
    if text is None:
        return {} if required_layer else None
    document, problem = _parse(text)
    if problem is not None:
        line, column, reason = problem
        raise ConfigError(f"{path}:{line}:{column}: {reason}")
    return document


def _project_file(path: str, trusted: bool) -> dict:
    """
    A project's configuration file; one that does not parse counts as empty
    unless the project is trusted.
    """
    try:
        text = _read_text(path)
    except _ReadError as e:
        raise ConfigError(f"Failed to read project config file {path}: {e}") from None
    if text is None:
        return {}
    document, problem = _parse(text)
    if problem is None:
        return document
    if not trusted:
        return {}
    raise ConfigError(f"Error parsing project config file {path}: {_snippet(text, problem)}")


def _requirements_file(path: str) -> dict | None:
    try:
        text = _read_text(path)
    except _ReadError as e:
        raise ConfigError(f"Failed to read requirements file {path}: {e}") from None
    if text is None:
        return None
    document, problem = _parse(text)
    if problem is not None:
        raise ConfigError(f"failed to parse requirements layer {path}: {_snippet(text, problem)}")
    return document


# Projects


def _merge(base: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _trusted_projects(config: dict) -> dict[str, str]:
    projects = config.get("projects")
    if projects is None:
        return {}
    if not isinstance(projects, dict):
        raise ConfigError(f"invalid type: {_toml_type(projects)}, expected a map\nin `projects`\n")
    levels = {}
    for key, project in projects.items():
        if not isinstance(project, dict):
            raise ConfigError(f"invalid type: {_toml_type(project)}, expected struct ProjectConfig\n"
                              f"in `projects.{key}`\n")
        level = project.get("trust_level")
        if level is None:
            continue
        if not isinstance(level, str):
            raise ConfigError("invalid type: unit variant, expected string only\n"
                              f"in `projects.{key}.trust_level`\n")
        if level not in ("trusted", "untrusted"):
            raise ConfigError(f"unknown variant `{level}`, expected `trusted` or `untrusted`\n"
                              f"in `projects.{key}.trust_level`\n")
        levels[key] = level
    return levels


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{tomlwriter.format_float(value)}`"
    if isinstance(value, str):
        return f"string {P.rust_debug_str(value)}"
    if isinstance(value, list):
        return "sequence"
    return "a datetime"


def _markers(config: dict) -> tuple[str, ...]:
    if "project_root_markers" not in config:
        return DEFAULT_PROJECT_ROOT_MARKERS
    markers = config["project_root_markers"]
    if not isinstance(markers, list) or not all(isinstance(m, str) for m in markers):
        raise ConfigError("project_root_markers must be an array of strings")
    return tuple(markers)


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def _is_directory(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _git_entry(directory: str) -> str | None:
    """
    The C{.git} of a repository checked out in C{directory}: a directory
    with a C{HEAD}, or a file (a linked worktree).
    """
    dot_git = os.path.join(directory, ".git")
    try:
        mode = os.lstat(dot_git).st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return dot_git if _exists(os.path.join(dot_git, "HEAD")) else None
    return dot_git


def _ancestors(path: str) -> list[str]:
    result = [path]
    while path != "/":
        path = os.path.dirname(path)
        result.append(path)
    return result


def _has_marker(directory: str, marker: str) -> bool:
    if marker == ".git":
        return _git_entry(directory) is not None
    return _exists(os.path.join(directory, marker))


def _project_root(cwd: str, markers: tuple[str, ...]) -> str:
    for directory in _ancestors(cwd):
        if any(_has_marker(directory, marker) for marker in markers):
            return directory
    return cwd


def _checkout(cwd: str) -> tuple[str, str] | None:
    base = cwd if _is_directory(cwd) or cwd == "/" else os.path.dirname(cwd)
    for directory in _ancestors(base):
        dot_git = _git_entry(directory)
        if dot_git is not None:
            return directory, dot_git
    return None


def _repository_root(checkout: tuple[str, str] | None) -> str | None:
    """
    The main checkout of the repository: the checkout itself, or for a
    linked worktree the checkout its C{gitdir:} leads back to.
    """
    if checkout is None:
        return None
    root, dot_git = checkout
    if _is_directory(dot_git):
        return root
    try:
        text = _read_text(dot_git)
    except _ReadError:
        return None
    if text is None or not text.strip().startswith("gitdir:"):
        return None
    git_dir = text.strip()[len("gitdir:"):].strip()
    if not git_dir:
        return None
    git_dir = os.path.normpath(os.path.join(root, git_dir))
    worktrees = os.path.dirname(git_dir)
    if os.path.basename(worktrees) != "worktrees":
        return None
    # The main checkout must list this worktree as its own, and share its
    # repository with it.
    common = os.path.dirname(worktrees)
    if (_admin_path(git_dir, "gitdir") != dot_git
            or _admin_path(git_dir, "commondir") != common):
        return None
    return os.path.dirname(common)


def _admin_path(git_dir: str, name: str) -> str | None:
    """
    The path a worktree's administrative file names, relative to it.
    """
    try:
        text = _read_text(os.path.join(git_dir, name))
    except _ReadError:
        return None
    return None if text is None else os.path.normpath(os.path.join(git_dir, text.strip()))


def _lookup_keys(path: str) -> list[str]:
    canonical = os.path.realpath(path) if os.path.exists(path) else path
    return [canonical] if canonical == path else [canonical, path]


class _Trust:
    def __init__(self, projects: dict[str, str], project_root: str, repository_root: str | None) -> None:
        self.projects = projects
        self.fallback_keys = _lookup_keys(project_root)
        if repository_root is not None:
            self.fallback_keys += _lookup_keys(repository_root)

    def trusted(self, directory: str) -> bool:
        for key in _lookup_keys(directory) + self.fallback_keys:
            if key in self.projects:
                return self.projects[key] == "trusted"
        return False


def _sanitized(config: dict) -> dict:
    for key in PROJECT_DENYLIST:
        config.pop(key, None)
    features = config.get("features")
    if isinstance(features, dict):
        for key in PROJECT_FEATURE_DENYLIST:
            features.pop(key, None)
    return config


def _project_layers(cwd: str, codex_home: str, trust: _Trust, project_root: str,
                    checkout: tuple[str, str] | None, repository_root: str | None) -> list[tuple]:
    directories = []
    for directory in _ancestors(cwd):
        directories.append(directory)
        if directory == project_root:
            break
    layers = []
    home = os.path.realpath(codex_home)
    for directory in reversed(directories):
        dot_codex = os.path.join(directory, DOT_CODEX)
        if not os.path.isdir(dot_codex) or dot_codex == codex_home or os.path.realpath(dot_codex) == home:
            continue
        trusted = trust.trusted(directory)
        config_path = os.path.join(dot_codex, CONFIG_FILE)
        config = _project_file(config_path, trusted)
        if not trusted:
            continue
        hooks_folder = _main_checkout_folder(directory, checkout, repository_root)
        if hooks_folder is not None:
            config.pop("hooks", None)
        layers.append((f"project ({config_path})", dot_codex, _sanitized(config)))
        if hooks_folder is not None:
            main_config = _project_file(os.path.join(hooks_folder, CONFIG_FILE), trusted=True)
            if "hooks" in main_config:
                layers.append((f"project ({hooks_folder}/{CONFIG_FILE})", hooks_folder,
                               {"hooks": main_config["hooks"]}))
    return layers


def _main_checkout_folder(directory: str, checkout: tuple[str, str] | None,
                          repository_root: str | None) -> str | None:
    """
    For a linked worktree, the main checkout's C{.codex} beside C{directory},
    whose hooks apply.
    """
    if checkout is None or repository_root is None or checkout[0] == repository_root:
        return None
    relative = os.path.relpath(directory, checkout[0])
    if relative.startswith(".."):
        return None
    return os.path.normpath(os.path.join(repository_root, relative, DOT_CODEX))


# Projection


def _selector(paths_: list[list[str]]) -> dict | None:
    """
    A tree of the asked paths; C{None} marks a path's end (all below it).
    """
    root: dict = {}
    for path in paths_:
        node = root
        for index, segment in enumerate(path):
            if node.get(segment, {}) is None:
                break
            if index == len(path) - 1:
                node[segment] = None
            else:
                node = node.setdefault(segment, {})
    return root


def _project_value(value: Any, selector: dict | None) -> Any:
    if selector is None or not isinstance(value, dict):
        # A value that is not a table still overrides lower layers whole.
        return value
    return {key: _project_value(item, selector[key]) for key, item in value.items() if key in selector}


def project(layers: list[tuple], cloud_index: int, asked: list[list[str]]) -> dict:
    selector = _selector(asked)
    kept = []
    index = 0
    for position, (source, base_dir, document) in enumerate(layers):
        projected = _project_value(document, selector)
        if not projected:
            continue
        if position < cloud_index:
            index += 1
        kept.append({"source": source, "baseDir": paths.from_host_path(base_dir),
                     "toml": tomlwriter.dumps(projected)})
    return {"layers": kept, "cloudInsertionIndex": index}


# The request


def codex_home() -> str:
    """
    C{$CODEX_HOME} (which must be a directory), else C{~/.codex}.

    @raise ConfigError: with the reference's text.
    """
    value = os.environ.get("CODEX_HOME")
    if not value:
        home = environment.home_directory()
        if home is None:
            raise ConfigError("failed to find Codex home: Could not find home directory")
        return os.path.join(home, ".codex")
    try:
        is_directory = stat.S_ISDIR(os.stat(value).st_mode)
    except FileNotFoundError:
        raise ConfigError(f"failed to find Codex home: CODEX_HOME points to "
                          f"{P.rust_debug_str(value)}, but that path does not exist") from None
    except OSError as e:
        raise ConfigError(f"failed to find Codex home: failed to read CODEX_HOME "
                          f"{P.rust_debug_str(value)}: {oserrors.describe(e)}") from None
    if not is_directory:
        raise ConfigError(f"failed to find Codex home: CODEX_HOME points to "
                          f"{P.rust_debug_str(value)}, but that path is not a directory")
    return os.path.realpath(value)


def read_environment_config(cwd: str, config_paths: list, requirements_paths: list) -> dict:
    home = codex_home()
    try:
        return _read(cwd, home, config_paths, requirements_paths)
    except ConfigError as e:
        raise ConfigError(f"failed to load executor-local config: {e}") from None


def _read(cwd: str, home: str, config_paths: list, requirements_paths: list) -> dict:
    managed = _config_file(MANAGED_CONFIG, required_layer=False)
    system = _config_file(SYSTEM_CONFIG, required_layer=True)
    user_file = os.path.join(home, CONFIG_FILE)
    user = _config_file(user_file, required_layer=True)
    discovery: dict = {}
    for layer in (system, user, managed or {}):
        _merge(discovery, layer)
    markers = _markers(discovery)

    system_requirements = _requirements_file(SYSTEM_REQUIREMENTS)
    requirements = []
    if system_requirements is not None:
        requirements.append((SYSTEM_REQUIREMENTS, SYSTEM_DIRECTORY, system_requirements))
    if managed is not None:
        requirements.append((MANAGED_CONFIG, SYSTEM_DIRECTORY, legacy_requirements(managed)))

    projects = _trusted_projects(discovery)
    project_root = _project_root(cwd, markers)
    checkout = _checkout(cwd)
    repository_root = _repository_root(checkout)
    trust = _Trust(projects, project_root, repository_root)

    config = [(f"system ({SYSTEM_CONFIG})", SYSTEM_DIRECTORY, system),
              (f"user ({user_file})", home, user)]
    config += _project_layers(cwd, home, trust, project_root, checkout, repository_root)
    if managed is not None:
        config.append((f"legacy managed_config.toml ({MANAGED_CONFIG})", SYSTEM_DIRECTORY, managed))

    home_dir = environment.home_directory()
    return {
        "userHomeDir": paths.from_host_path(home_dir) if home_dir is not None else None,
        "codexHomeDir": paths.from_host_path(home),
        "hostname": socket.gethostname(),
        "config": project(config, 1, config_paths),
        "requirements": project(requirements, 1 if system_requirements is not None else 0,
                                requirements_paths),
    }


def _run(cwd: str, config_paths: list, requirements_paths: list) -> dict:
    try:
        return read_environment_config(cwd, config_paths, requirements_paths)
    except ConfigError as e:
        raise rpc.internal_error(str(e)) from None


def handle_read(connection: ServerConnection, p: dict) -> Deferred:
    config_paths, requirements_paths = p["configPaths"], p["requirementsPaths"]
    if not config_paths and not requirements_paths:
        raise rpc.invalid_params("at least one config or requirements path is required")
    if any(not path for path in config_paths + requirements_paths):
        raise rpc.invalid_params("TOML paths must contain at least one key segment")
    try:
        cwd = os.fsdecode(paths.to_host_path(p["cwd"]))
    except paths.ForeignPathError as e:
        raise rpc.invalid_params(str(e)) from None
    return connection.server.run_blocking(_run, cwd, config_paths, requirements_paths)


METHODS = {
    "environmentConfig/read": Method(FAMILY, ReadParams, handle_read),
}
