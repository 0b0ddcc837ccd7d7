"""
environmentConfig/read against the reference: the same configuration files,
the same layers, spelled the same way.

The user layer lives in the server's C{CODEX_HOME} (C{<codex-home>} in the
transcripts), project layers under the work directory. The system files
live in C{/etc/codex}: those tests run each server in a mount namespace of
its own, with a private copy of C{/etc} (root only).

Our TOML parser is Python's; where a file does not parse, the error's
position and wording around it are compared, not the parser's own
description of the problem (docs/compatibility.md).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tomllib

from tests.interop import InteropTestCase, interop

METHOD = "environmentConfig/read"
_PARSE_PROBLEM = re.compile(r"(:\d+:\d+: |\^\n).*", re.DOTALL)


def write(path: str, text: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def user_config(peer, text: str) -> None:
    write(os.path.join(peer.server.home, "config.toml"), text)


async def read(peer, label: str, config=(), requirements=(), cwd: str | None = None) -> dict:
    params = {"cwd": cwd or peer.uri(), "configPaths": [list(p) for p in config],
              "requirementsPaths": [list(p) for p in requirements]}
    reply = await peer.call(METHOD, params, label=label, record=False)
    if "error" in reply:
        reply["error"]["message"] = _PARSE_PROBLEM.sub(r"\1<problem>", reply["error"]["message"])
    peer.record(label, reply)
    return reply


async def params_and_validation(peer):
    good = {"cwd": peer.uri(), "configPaths": [["model"]], "requirementsPaths": []}
    await peer.call(METHOD, {"cwd": 5}, label="bad params first")
    await peer.call(METHOD, good, label="then the gate")
    await peer.handshake()
    for shape in (None, "x", 5, [], {}, ["file:///tmp", [["a"]]], ["file:///tmp", [["a"]], []],
                  ["file:///tmp", [["a"]], [], 1]):
        await peer.call(METHOD, shape, label=f"params {shape!r}")
    cases = {
        "no cwd": {"configPaths": [], "requirementsPaths": []},
        "no configPaths": {"cwd": "file:///tmp", "requirementsPaths": []},
        "no requirementsPaths": {"cwd": "file:///tmp", "configPaths": []},
        "cwd null": {"cwd": None, "configPaths": [["a"]], "requirementsPaths": []},
        "configPaths string": {"cwd": "file:///tmp", "configPaths": "x", "requirementsPaths": []},
        "configPaths of strings": {"cwd": "file:///tmp", "configPaths": ["x"], "requirementsPaths": []},
        "segment number": {"cwd": "file:///tmp", "configPaths": [[5]], "requirementsPaths": []},
        "requirementsPaths null": {"cwd": "file:///tmp", "configPaths": [["a"]], "requirementsPaths": None},
        "nothing asked": {"cwd": "file:///tmp", "configPaths": [], "requirementsPaths": []},
        "an empty config path": {"cwd": "file:///tmp", "configPaths": [["a"], []], "requirementsPaths": []},
        "an empty requirements path": {"cwd": "file:///tmp", "configPaths": [], "requirementsPaths": [[]]},
        "relative cwd": {"cwd": "rel", "configPaths": [["a"]], "requirementsPaths": []},
        "foreign cwd": {"cwd": "file:///C:/x", "configPaths": [["a"]], "requirementsPaths": []},
        "foreign cwd, nothing asked": {"cwd": "file:///C:/x", "configPaths": [], "requirementsPaths": []},
        "host cwd": {"cwd": "file://host/x", "configPaths": [["a"]], "requirementsPaths": []},
        "missing cwd": {"cwd": "file:///nonexistent/dir", "configPaths": [["a"]], "requirementsPaths": []},
        "file cwd": {"cwd": "file:///etc/passwd", "configPaths": [["a"]], "requirementsPaths": []},
        "unknown member": {"cwd": "file:///tmp", "configPaths": [["a"]], "requirementsPaths": [], "x": 1},
    }
    for label, params in cases.items():
        await peer.call(METHOD, params, label=label)


TOML_VALUES = r'''
s1 = "plain"
s2 = 'lit "quoted" \back'
s3 = "tab\tnew\nline"
s4 = """multi
line"""
s5 = "quote\" and 'single'"
s6 = "é ü 😀"
s7 = "ctrl\u0001\u007f"
s8 = ""
s9 = 'only \ backslash'
s10 = "\u0027\u0027\u0027"
s11 = "\"\"\""
s12 = "line\n\"\"\"x"
s13 = "ends with '"
s14 = "\r"
s15 = "new\nline 'q'"
s16 = "bs\\ and\nnl"
s17 = "tab\tonly"
i1 = 42
i2 = -17
i3 = 0x1F
i4 = 1_000
i5 = 9223372036854775807
f1 = 1.0
f2 = 3.14
f3 = 1e10
f4 = -0.0
f5 = inf
f6 = nan
f7 = 6.02e-23
f8 = 1e300
f9 = 123456789012345678.0
b1 = true
d1 = 1979-05-27T07:32:00Z
d2 = 1979-05-27T00:32:00.999999-07:00
d3 = 1979-05-27
d4 = 07:32:00.5
d5 = 1979-05-27T07:32:00
a1 = []
a2 = [1, 2, 3]
a3 = ["a", [1, 2], {x = 1}]
a4 = [{a = 1, b = "x"}, {c = [1]}]
a5 = [[{a = 1}]]
a6 = [{}]
a7 = [{}, 1]
"key with space" = 1
"" = "empty key"
"é" = 2
"a.b" = 3
"it's" = 4
'say "x"' = 5
bare-key_1 = 6
inl = {x = 1, y = {z = 2}}
empty_inline = {}

[t1]
k = 1
[t1.sub]
k2 = 2
[t1.sub.deeper]
k3 = 3
[t2]
[t3."quoted key".x]
v = 1
[[aot]]
n = 1
[[aot]]
n = 2
[aot.sub]
q = 1
[mixed]
arr = [{a = 1}]
plain = 1
[dotted]
a.b.c = 1
a.d = 2
'''


async def toml_spelling(peer):
    """
    Every kind of TOML value, read back as the toml crate writes it.
    """
    await peer.handshake()
    user_config(peer, TOML_VALUES)
    keys = list(tomllib.loads(TOML_VALUES))
    await read(peer, "all at once", config=[[key] for key in keys])
    for key in keys:
        await read(peer, f"just {key!r}", config=[[key]])


async def projection(peer):
    """
    Paths select keys; a non-table on the way keeps its whole value; a
    layer with nothing selected is left out.
    """
    await peer.handshake()
    await read(peer, "no user file", config=[["model"]], requirements=[["x"]])
    user_config(peer, TOML_VALUES)
    for paths in ([["t1", "sub"]], [["t1", "k"]], [["t1"], ["t1", "k"]], [["t1", "k"], ["t1"]],
                  [["aot", "n"]], [["a3", "0"]], [["inl", "y"]], [["dotted", "a", "b"]], [["t2", "x"]],
                  [["t3"]], [["s1", "deeper"]], [["nothing"]], [["t1", "nothing"]],
                  [["mixed", "plain"], ["s1"]], [["s1"], ["s1"]]):
        await read(peer, f"paths {paths}", config=paths)
    await read(peer, "requirements only", requirements=[["t1"]])


def project_cases(base: str) -> list:
    def cfg(name):
        return (f'model = "{name}"\nnotify = ["x"]\nprofile = "p"\nmodel_provider = "m"\n'
                f'[features]\nrespect_system_proxy = true\nother = 1\n[hooks]\nh = "{name}"\n')

    def trust(*dirs, level="trusted"):
        return "".join(f'[projects."{base}{d}"]\ntrust_level = "{level}"\n' for d in dirs)

    layers = {"p/.codex/config.toml": cfg("p"), "p/a/.codex/config.toml": cfg("a"),
              "p/a/b/.codex/config.toml": cfg("b")}
    repo = dict(layers, **{"p/.git/HEAD": "ref: refs/heads/main\n"})
    worktree = dict(layers, **{
        "p/.git": f"gitdir: {base}/main/.git/worktrees/p\n",
        "main/.git/HEAD": "x", "main/.git/worktrees/p/gitdir": f"{base}/p/.git\n",
        "main/.git/worktrees/p/commondir": "../..\n",
        "main/.codex/config.toml": cfg("main"), "main/a/.codex/config.toml": cfg("main-a"),
    })
    return [
        ("an empty .git is no repository", dict(layers, **{"p/.git/": None}), trust("/p"), "/p/a/b"),
        ("a repository, its root trusted", repo, trust("/p"), "/p/a/b"),
        ("a subdirectory trusted", repo, trust("/p/a"), "/p/a/b"),
        ("a subdirectory untrusted", repo, trust("/p") + trust("/p/a", level="untrusted"), "/p/a/b"),
        ("no repository: only cwd", layers, trust("/p", "/p/a", "/p/a/b"), "/p/a/b"),
        ("a linked worktree, its main checkout trusted", worktree, trust("/main"), "/p/a/b"),
        ("a worktree the main checkout does not list",
         dict(worktree, **{"main/.git/worktrees/p/gitdir": "/elsewhere/.git\n"}), trust("/main"), "/p/a/b"),
        ("a worktree of another repository",
         dict(worktree, **{"main/.git/worktrees/p/commondir": "/elsewhere/.git\n"}), trust("/main"), "/p/a/b"),
        ("a worktree listed relatively",
         dict(worktree, **{"main/.git/worktrees/p/gitdir": "../../../../p/.git\n"}), trust("/main"), "/p/a/b"),
        ("a .git file that is no worktree", dict(layers, **{"p/.git": "gitdir: ../elsewhere\n"}),
         trust("/p"), "/p/a/b"),
        ("custom markers", dict(repo, **{"p/a/MARK": ""}),
         'project_root_markers = ["MARK"]\n' + trust("/p/a"), "/p/a/b"),
        ("no markers", repo, "project_root_markers = []\n" + trust("/p"), "/p/a/b"),
        ("markers not a list", repo, 'project_root_markers = "x"\n', "/p/a/b"),
        ("a cwd that does not exist", repo, trust("/p"), "/p/a/b/zz"),
        ("a cwd that is a file", dict(repo, **{"p/a/f": "x"}), trust("/p"), "/p/a/f"),
        (".codex is a file", {"p/.git/HEAD": "x", "p/.codex": "file", "p/a/.codex/config.toml": cfg("a")},
         trust("/p"), "/p/a"),
        ("no config.toml in .codex", {"p/.git/HEAD": "x", "p/.codex/": None}, trust("/p"), "/p"),
        ("trusted, does not parse", {"p/.git/HEAD": "x", "p/.codex/config.toml": "a = \n"}, trust("/p"), "/p"),
        ("untrusted, does not parse", {"p/.git/HEAD": "x", "p/.codex/config.toml": "a = \n"}, "", "/p"),
        ("config.toml is a directory, trusted", {"p/.git/HEAD": "x", "p/.codex/config.toml/": None},
         trust("/p"), "/p"),
        ("config.toml is a directory, untrusted", {"p/.git/HEAD": "x", "p/.codex/config.toml/": None},
         "", "/p"),
        ("a linked .codex", {"p/.git/HEAD": "x", "real/config.toml": cfg("real"), "p/.codex": "@../real"},
         trust("/p"), "/p"),
        ("a linked cwd", dict(repo, **{"link": "@p/a"}), trust("/p"), "/link"),
        ("trust named through a link", dict(repo, **{"link": "@p"}), trust("/link"), "/p/a"),
        ("trust level not a string", repo, f'[projects."{base}/p"]\ntrust_level = 5\n', "/p"),
        ("trust level unknown", repo, f'[projects."{base}/p"]\ntrust_level = "maybe"\n', "/p"),
        ("a project not a table", repo, f'[projects]\n"{base}/p" = 5\n', "/p"),
        ("projects not a table", repo, "projects = [1]\n", "/p"),
        ("a project without a trust level", repo, f'[projects."{base}/p"]\nother = 1\n', "/p"),
    ]


def build(base: str, spec: dict) -> None:
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    for relative, content in spec.items():
        path = os.path.join(base, relative)
        if content is None:
            os.makedirs(path, exist_ok=True)
        elif content.startswith("@"):
            os.symlink(content[1:], path)
        else:
            write(path, content)


async def project_layers(peer):
    await peer.handshake()
    base = peer.path("w")
    asked = [["model"], ["notify"], ["profile"], ["model_provider"], ["features"], ["hooks"], ["a"]]
    for label, spec, user, cwd in project_cases(base):
        build(base, spec)
        user_config(peer, user)
        await read(peer, label, config=asked, cwd=peer.uri("w", *cwd.strip("/").split("/")))


async def user_file_problems(peer):
    await peer.handshake()
    home = peer.server.home
    for label, text in (("does not parse", "a = \n"), ("not UTF-8", b'a = "\xff"\n')):
        write(os.path.join(home, "config.toml"), text)
        await read(peer, label, config=[["a"]])
    os.remove(os.path.join(home, "config.toml"))
    os.mkdir(os.path.join(home, "config.toml"))
    await read(peer, "a directory", config=[["a"]])


async def codex_home_problems(peer):
    await peer.handshake()
    await read(peer, "CODEX_HOME is missing", config=[["a"]])


class EnvironmentConfigTests(InteropTestCase):
    test_params_and_validation = interop(params_and_validation)
    test_toml_spelling = interop(toml_spelling)
    test_projection = interop(projection)
    test_project_layers = interop(project_layers)
    test_user_file_problems = interop(user_file_problems)
    test_codex_home_missing = interop(codex_home_problems, env={"CODEX_HOME": "/nonexistent/codex-home"})
    test_codex_home_a_file = interop(codex_home_problems, env={"CODEX_HOME": "/etc/passwd"})


# /etc/codex, in a mount namespace per server.


_ETC_COPIES: dict[str, str] = {}


def _private_etc(kind: str) -> list[str]:
    copy = os.path.join(tempfile.mkdtemp(prefix=f"execserver-etc-{kind}-"), "etc")
    shutil.copytree("/etc", copy, symlinks=True)
    os.makedirs(os.path.join(copy, "codex"), exist_ok=True)
    _ETC_COPIES[kind] = copy
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc && exec "$@"', copy]


def system_files(peer, files: dict) -> None:
    codex = os.path.join(_ETC_COPIES[peer.kind], "codex")
    shutil.rmtree(codex)
    os.mkdir(codex)
    for name, text in files.items():
        if text is None:
            os.mkdir(os.path.join(codex, name))
        else:
            write(os.path.join(codex, name), text)


async def system_layers(peer):
    await peer.handshake()
    user_config(peer, 'model = "user"\n')
    config = [["model"], ["approval_policy"], ["features"], ["x"], ["a"]]
    requirements = [["allowed_approval_policies"], ["allowed_approvals_reviewers"],
                    ["allowed_sandbox_modes"], ["features"], ["whatever"], ["a"]]
    cases = [
        ("nothing in /etc/codex", {}),
        ("all three", {"config.toml": 'model = "system"\n[features]\nsys = true\n',
                       "managed_config.toml": 'model = "managed"\napproval_policy = "on-request"\n'
                                              'sandbox_mode = "workspace-write"\n',
                       "requirements.toml": 'allowed_approval_policies = ["never", "on-request"]\n'
                                            '[features]\nx = 1\n'}),
        ("legacy mappings", {"managed_config.toml": 'approval_policy = "untrusted"\n'
                                                    'approvals_reviewer = "auto_review"\n'
                                                    'sandbox_mode = "danger-full-access"\n'}),
        ("legacy reviewer user", {"managed_config.toml": 'approvals_reviewer = "user"\nsandbox_mode = "read-only"\n'}),
        ("legacy guardian", {"managed_config.toml": 'approvals_reviewer = "guardian_subagent"\n'}),
        ("legacy on-failure", {"managed_config.toml": 'approval_policy = "on-failure"\n'}),
        ("legacy never", {"managed_config.toml": 'approval_policy = "never"\n'}),
        ("legacy unknown policy", {"managed_config.toml": 'approval_policy = "sometimes"\n'}),
        ("legacy policy not a string", {"managed_config.toml": "approval_policy = 5\n"}),
        ("legacy unknown mode", {"managed_config.toml": 'sandbox_mode = "open"\n'}),
        ("legacy unknown reviewer", {"managed_config.toml": 'approvals_reviewer = "guardian"\n'}),
        ("managed, other keys only", {"managed_config.toml": 'model = "m"\nx = 1\n'}),
        ("managed does not parse", {"managed_config.toml": "a = \n"}),
        ("managed is a directory", {"managed_config.toml": None}),
        ("system does not parse", {"config.toml": "a = \n"}),
        ("system is a directory", {"config.toml": None}),
        ("system not UTF-8", {"config.toml": b'a = "\xff"\n'}),
        ("requirements do not parse", {"requirements.toml": "a = \n"}),
        ("requirements are a directory", {"requirements.toml": None}),
        ("requirements hold anything", {"requirements.toml": 'whatever = {x = 1}\nallowed_approval_policies = "bad"\n'}),
        ("system markers not a list", {"config.toml": 'project_root_markers = "x"\n'}),
        ("managed projects not a table", {"managed_config.toml": "projects = 5\n"}),
    ]
    for label, files in cases:
        system_files(peer, files)
        await read(peer, label, config=config, requirements=requirements)


class SystemLayerTests(InteropTestCase):
    if os.geteuid() != 0:
        skip = "a private /etc needs a mount namespace (root)"

    def tearDown(self):
        for copy in _ETC_COPIES.values():
            shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
        _ETC_COPIES.clear()

    test_system_layers = interop(system_layers, wrapper=_private_etc)
