"""
capabilityRoots/discoverV1 and capabilities/discoverV2 against the
reference, on skill and plugin trees laid out as codex lays them out
(docs/reference/methods.md):

    <root>/.codex-plugin/plugin.json          a plugin root (also .claude-plugin, .cursor-plugin)
    <root>/.mcp.json                          its MCP servers (or the manifest's mcpServers)
    <anywhere below>/SKILL.md                 a skill; YAML front matter name, description
    <skill dir>/agents/openai.yaml            its metadata: policy, dependencies
    $CODEX_HOME/skills/...                    standalone skills (V2)
    $CODEX_HOME/plugins/cache/<marketplace>/<plugin>/<version>/   installed plugins (V2)
"""

from __future__ import annotations

import os
import shutil
import tempfile

from tests.interop import InteropTestCase, interop

V1 = "capabilityRoots/discoverV1"


def write(path: str, text: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())


SKILL = "---\nname: {name}\ndescription: {description}\n---\nInstructions.\n"


def v1_tree(peer) -> None:
    p = lambda *parts: peer.path("c", *parts)
    write(p("plug", ".codex-plugin", "plugin.json"), '{"name": "demo", "version": "1.0.0"}')
    write(p("plug", ".claude-plugin", "plugin.json"), '{"name": "shadowed"}')
    write(p("plug", ".mcp.json"), '{"mcpServers": {}}')
    write(p("plug", "skills", "one", "SKILL.md"), SKILL.format(name="one", description="d"))
    write(p("plug", "skills", "one", "agents", "openai.yaml"), "policy: {}\n")
    write(p("plug", "nested", ".cursor-plugin", "plugin.json"), '{"name": "inner"}')
    write(p("plug", "nested", "skills", "two", "SKILL.md"), "no front matter")
    write(p("declared", ".claude-plugin", "plugin.json"),
          '{"name": "p2", "mcpServers": "./conf/mcp.json", "apps": "./conf/apps.json"}')
    write(p("declared", "conf", "mcp.json"), '{"x": 1}')
    write(p("declared", "conf", "apps.json"), '{"y": 2}')
    write(p("declared", ".mcp.json"), "not read")
    write(p("outside", ".codex-plugin", "plugin.json"),
          '{"mcpServers": "conf/mcp.json", "apps": "./../x.json"}')
    write(p("inline", ".codex-plugin", "plugin.json"), '{"mcpServers": {"a": {}}, "apps": 5}')
    write(p("inline", ".mcp.json"), "not read")
    write(p("notjson", ".codex-plugin", "plugin.json"), "not json")
    write(p("notjson", ".mcp.json"), "{}")
    write(p("array", ".codex-plugin", "plugin.json"), '["./m.json", "./a.json"]')
    write(p("array", "m.json"), "m")
    write(p("array", "a.json"), "a")
    write(p("binary", ".codex-plugin", "plugin.json"), b"\xff\xfe")
    write(p("root-only", ".codex-plugin", "plugin.json"), '{"apps": "./"}')
    write(p("missing", ".codex-plugin", "plugin.json"), '{"mcpServers": "./none.json", "apps": "./dir"}')
    os.makedirs(p("missing", "dir"))
    write(p("notdir", ".codex-plugin"), "a file where the folder would be")
    write(p("plain", "sub", ".codex-plugin", "plugin.json"), '{"name": "sub"}')
    write(p("plain", "SKILL.md"), "root skill")
    write(p("plain", "a", "SKILL.md"), b"\xff")
    write(p("plain", "b", "SKILL.md", "x"), "SKILL.md is a directory")
    write(p("plain", "c", "skill.md"), "lowercase")
    write(p("plain", "plugin.json"), "{}")
    write(p("plain", "x", "plugin.json"), "{}")
    write(p("deep", "1", "2", "3", "4", "5", "SKILL.md"), "d5")
    write(p("deep", "1", "2", "3", "4", "5", "6", "SKILL.md"), "d6")
    write(p("deep", "1", "2", "3", "4", "5", "6", "7", "SKILL.md"), "d7")
    os.makedirs(p("links"))
    os.symlink(p("plug", "skills"), p("links", "dirlink"))
    os.symlink(p("plug", "skills", "one", "SKILL.md"), p("links", "SKILL.md"))
    os.symlink(p("plug", ".codex-plugin"), p("links", ".codex-plugin"))
    write(p("big", "SKILL.md"), "x" * (1024 * 1024 + 1))
    write(p("big", "ok", "SKILL.md"), "y" * (1024 * 1024))
    write(p("file"), "not a directory")


async def discover_v1(peer):
    await peer.handshake()
    v1_tree(peer)
    names = ["plug", "declared", "outside", "inline", "notjson", "array", "binary", "root-only",
             "missing", "notdir", "plain", "deep", "links", "plug/skills", "plug/nested/skills",
             "nonexistent", "file"]
    for name in names:
        await peer.call(V1, {"roots": [{"id": name, "path": peer.uri("c", *name.split("/"))}]},
                        label=f"root {name}")
    reply = await peer.call(V1, {"roots": [{"id": "big", "path": peer.uri("c", "big")}]}, record=False)
    for root in reply["result"]["roots"]:
        for skill in root["skills"]:
            skill["instructions"]["contents"] = len(skill["instructions"]["contents"])
    peer.record("root big", reply)
    await peer.call(V1, {"roots": [{"id": "a", "path": peer.uri("c", "plug")},
                                   {"id": "a", "path": peer.uri("c", "plain") + "/"},
                                   {"id": "", "path": "file:///C:/x"}]}, label="several roots")


async def discover_v1_params(peer):
    root = peer.uri()
    await peer.call(V1, {"roots": "x"}, label="bad params first")
    await peer.call(V1, {"roots": []}, label="then the gate")
    await peer.handshake()
    for params in (None, "x", 5, [], {}, [[]], {"roots": None}, {"roots": [5]},
                   {"roots": [{"id": "r"}]}, {"roots": [{"path": root}]}, {"roots": [{"id": 5, "path": root}]},
                   {"roots": [{"id": "r", "path": "rel"}]}, {"roots": [["r", root]]},
                   {"roots": [["r", root, None]]}, {"roots": [["r", root, 1]]},
                   {"roots": [{"id": "r", "path": root, "sandbox": {}}]},
                   {"roots": [{"id": "r", "path": root, "extra": 1}]}):
        await peer.call(V1, params, label=f"params {params!r}".replace(peer.workdir, "<workdir>"))
    await peer.call(V1, {"roots": [{"id": "x", "path": "file:///nonexistent"}] * 128}, label="128 roots")
    await peer.call(V1, {"roots": [{"id": "x", "path": "file:///nonexistent"}] * 129}, label="129 roots")
    unrestricted = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}
    await peer.call(V1, {"roots": [{"id": "r", "path": root, "sandbox": unrestricted}]},
                    label="a sandbox that restricts nothing")


class DiscoverV1Tests(InteropTestCase):
    test_discover_v1 = interop(discover_v1)
    test_discover_v1_params = interop(discover_v1_params)


V2 = "capabilities/discoverV2"
NO_HOME = {"HOME": "/nonexistent/execserver-home"}


async def discover_v2_params(peer):
    await peer.call(V2, {"cwd": 5}, label="bad params first")
    await peer.call(V2, {"cwd": "file:///tmp"}, label="then the gate")
    await peer.handshake()
    for params in (None, "x", 5, [], {}, ["file:///tmp"], ["file:///tmp", None], ["file:///tmp", None, None],
                   {"cwd": "rel"}, {"cwd": "file:///C:/x"}, {"cwd": "file:///nonexistent"},
                   {"cwd": "file:///tmp", "sandbox": 5}, {"cwd": "file:///tmp", "sandbox": {}},
                   {"cwd": "file:///tmp", "roots": 5}):
        await peer.call(V2, params, label=f"params {params!r}")
    unrestricted = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}
    await peer.call(V2, {"cwd": "file:///tmp", "sandbox": unrestricted}, label="a sandbox without cwd")
    await peer.call(V2, {"cwd": "file:///tmp", "sandbox": dict(unrestricted, cwd="file:///tmp")},
                    label="a sandbox that restricts nothing")
    await peer.call(V2, {"cwd": peer.uri()}, label="nothing installed")


FRONT_MATTER = {
    "a-noname": "---\ndescription: no name\n---\nbody\n",
    "b-nodesc": "---\nname: b\n---\nbody\n",
    "c-nofm": "just body\n",
    "d-badyaml": "---\nname: [unclosed\n---\n",
    "e-unterminated": "---\nname: e\ndescription: x\n",
    "f-empty": "",
    "g-numbers": "---\nname: 5\ndescription: 6\n---\n",
    "h-extra": "---\nname: h\ndescription: d\nlicense: MIT\nallowed-tools: [x]\n---\n",
    "i-crlf": "---\r\nname: i\r\ndescription: d\r\n---\r\n",
    "j-bom": "\ufeff---\nname: j\ndescription: d\n---\n",
    "k-longname": "---\nname: " + "k" * 65 + "\ndescription: d\n---\n",
    "k-name64": "---\nname: " + "k" * 64 + "\ndescription: d\n---\n",
    "l-longdesc": "---\nname: l\ndescription: " + "d" * 1100 + "\n---\n",
    "m-multiline": "---\nname: m\ndescription: |\n  line one\n  line two\n---\n",
    "n-spaces name": "---\ndescription: d\n---\n",
    "o-emptyname": '---\nname: ""\ndescription: d\n---\n',
    "p-emptydesc": '---\nname: p\ndescription: ""\n---\n',
    "q-shortdesc": "---\nname: q\ndescription: d\nmetadata:\n  short-description: sd\n  other: 1\n---\n",
    "r-leading-blank": "\n---\nname: r\ndescription: d\n---\n",
    "t-colon": "---\nname: a:b\ndescription: Build for AWS: ECS\n---\n",
    "u-space": "---\nname: u  u\ndescription: '  spaced   out  '\n---\n",
    "v-nulls": "---\nname: ~\ndescription: d\nmetadata: null\n---\n",
    "w-name-list": "---\nname: [a]\ndescription: d\n---\n",
    "x-quoted": '---\nname: "x \\"q\\""\ndescription: \'it\'\'s\'\n---\n',
}

OPENAI_YAML = {
    "y01": "policy:\n  allow_implicit_invocation: true\n  products: [codex, chatgpt, atlas]\n",
    "y02": "policy:\n  products: [bogus]\n",
    "y03": "policy:\n  allow_implicit_invocation: maybe\n",
    "y04": "policy: 5\n",
    "y05": "dependencies:\n  tools:\n    - type: env_var\n      value: TOKEN\n      description: d\n"
           "    - type: mcp\n      value: srv\n      transport: streamable_http\n      url: https://x\n"
           "      oauth:\n        callback_port: 8080\n    - type: cli\n      value: gh\n      command: gh\n",
    "y06": "dependencies:\n  tools:\n    - type: mcp\n",
    "y07": "dependencies:\n  tools: []\n",
    "y08": "dependencies: {}\n",
    "y09": "dependencies:\n  tools:\n    - type: mcp\n      value: x\n    - type: cli\n",
    "y10": "dependencies:\n  tools:\n    - type: \"  \"\n      value: x\n",
    "y11": "not: [valid yaml\n",
    "y12": "",
    "y13": "- a list\n",
    "y14": "policy: {}\n",
    "y15": "policy:\n  products: [CODEX]\n",
    "y16": "policy:\n  allow_implicit_invocation: \"false\"\n",
    "y17": "dependencies:\n  tools:\n    - type: mcp\n      value: x\n      description: \"  multi\n        line  \"\n",
    "y18": "policy:\n  allow_implicit_invocation: false\n  products: [codex, codex]\n",
}


def standalone_skills(home: str) -> None:
    for directory, text in FRONT_MATTER.items():
        write(os.path.join(home, "skills", directory, "SKILL.md"), text)
    write(os.path.join(home, "skills", "z-binary", "SKILL.md"), b"---\nname: s\ndescription: \xff\n---\n")
    write(os.path.join(home, "skills", "nested", "deeper", "x", "SKILL.md"), SKILL.format(name="deep", description="d"))
    for directory, text in OPENAI_YAML.items():
        write(os.path.join(home, "skills", directory, "SKILL.md"), SKILL.format(name=directory, description="d"))
        write(os.path.join(home, "skills", directory, "agents", "openai.yaml"), text)
    write(os.path.join(home, "skills", "ns", ".codex-plugin", "plugin.json"), '{"name": "standalone-ns"}')
    write(os.path.join(home, "skills", "ns", "inner", "SKILL.md"), SKILL.format(name="inner", description="d"))


async def discover_v2_installed(peer):
    await peer.handshake()
    await peer.call(V2, {"cwd": peer.uri()}, label="installed skills and plugins")


def plugin_cache(home: str) -> None:
    def w(relative, text):
        write(os.path.join(home, "plugins", "cache", *relative.split("/")), text)

    w("mkt/demo/1.2.0/.codex-plugin/plugin.json", '{"name": "demo", "version": "1.2.0"}')
    w("mkt/demo/1.2.0/skills/s1/SKILL.md", SKILL.format(name="s1", description="older"))
    w("mkt/demo/1.10.0/.codex-plugin/plugin.json", '{"name": "demo", "version": "1.10.0"}')
    w("mkt/demo/1.10.0/skills/s1/SKILL.md", SKILL.format(name="s1", description="newer"))
    w("mkt/demo/1.10.0/.mcp.json", '{"mcpServers": {}}')
    w("mkt/loc/local/.claude-plugin/plugin.json", '{"name": "loc"}')
    w("mkt/loc/9.9.9/.claude-plugin/plugin.json", '{"name": "loc9"}')
    w("mkt/remote/2.0.0/.codex-plugin/plugin.json", '{"name": "remote"}')
    w("mkt/remote/.codex-remote-plugin-install.json", '{"schema_version": 1, "remote_plugin_id": " plugins~abc "}')
    w("mkt/badmeta/1.0.0/.codex-plugin/plugin.json", '{"name": "bm"}')
    w("mkt/badmeta/.codex-remote-plugin-install.json", '{"schema_version": 2, "remote_plugin_id": "x"}')
    w("mkt/nomanifest/1.0.0/skills/x/SKILL.md", SKILL.format(name="x", description="d"))
    w("mkt/notjson/1.0.0/.codex-plugin/plugin.json", "nope")
    w("mkt/notjson/1.0.0/skills/s/SKILL.md", SKILL.format(name="s", description="d"))
    w("mkt/noname/1.0.0/.codex-plugin/plugin.json", '{"version": "1"}')
    w("mkt/noname/1.0.0/skills/s/SKILL.md", SKILL.format(name="s", description="d"))
    w("mkt/blank/2.0.0/.codex-plugin/plugin.json", '{"name": "  "}')
    w("mkt/vers/1.0.0-alpha/.codex-plugin/plugin.json", '{"name": "a"}')
    w("mkt/vers/1.0.0/.codex-plugin/plugin.json", '{"name": "b"}')
    w("mkt/pre/1.0.0-alpha/.codex-plugin/plugin.json", '{"name": "alpha"}')
    w("mkt/pre/1.0.0-alpha.2/.codex-plugin/plugin.json", '{"name": "alpha2"}')
    w("mkt/pre/1.0.0-beta/.codex-plugin/plugin.json", '{"name": "beta"}')
    w("mkt/badver/v..1/.codex-plugin/plugin.json", '{"name": "b"}')
    w("mkt/nested/1.0.0/.codex-plugin/plugin.json", '{"name": "nested"}')
    w("mkt/nested/1.0.0/inner/.codex-plugin/plugin.json", '{"name": "innerns"}')
    w("mkt/nested/1.0.0/inner/skills/y/SKILL.md", SKILL.format(name="y", description="d"))
    w("mkt/nested/1.0.0/skills/z/SKILL.md", SKILL.format(name="z", description="d"))
    w("mkt/nested/1.0.0/skills/z/agents/openai.yaml", "policy:\n  allow_implicit_invocation: false\n")
    w("mkt/longskill/1.0.0/.codex-plugin/plugin.json", '{"name": "%s"}' % ("n" * 70))
    w("mkt/longskill/1.0.0/skills/s/SKILL.md", SKILL.format(name="s" * 58, description="d"))
    w("mkt/fits/1.0.0/.codex-plugin/plugin.json", '{"name": "%s"}' % ("n" * 64))
    w("mkt/fits/1.0.0/skills/s/SKILL.md", SKILL.format(name="s" * 64, description="d"))
    for name in ("UpperCase", "dot.name", "under_score", "Bad Name", "é"):
        w(f"mkt/{name}/1.0.0/.codex-plugin/plugin.json", '{"name": "x"}')
    w("other/demo/0.1.0/.codex-plugin/plugin.json", '{"name": "demo-other"}')
    w("m_u/p/1.0.0/.codex-plugin/plugin.json", '{"name": "p"}')
    w("strayfile", "x")


class DiscoverV2Tests(InteropTestCase):
    test_discover_v2_params = interop(discover_v2_params, env=NO_HOME)


class InstalledTests(InteropTestCase):
    """
    Skills and plugins in a CODEX_HOME prepared before the servers start:
    the reference caches what it found and refreshes on file system events,
    so what changes while it runs shows up later, not at once.
    """

    codex_home = os.path.join(tempfile.gettempdir(), f"execserver-installed-home-{os.getpid()}")

    def setUp(self):
        standalone_skills(self.codex_home)
        plugin_cache(self.codex_home)

    def tearDown(self):
        shutil.rmtree(self.codex_home, ignore_errors=True)

    test_installed = interop(discover_v2_installed, env=dict(NO_HOME, CODEX_HOME=codex_home))


async def discover_v2_user_skills(peer):
    await peer.handshake()
    await peer.call(V2, {"cwd": peer.uri()}, label="skills in ~/.agents/skills")


class UserSkillsTests(InteropTestCase):
    """
    ~/.agents/skills, read by both servers from one home prepared before
    they start.
    """

    home = os.path.join(tempfile.gettempdir(), f"execserver-agents-home-{os.getpid()}")

    def setUp(self):
        write(os.path.join(self.home, ".agents", "skills", "mine", "SKILL.md"),
              SKILL.format(name="mine", description="a user skill"))
        write(os.path.join(self.home, ".agents", "skills", "bad", "SKILL.md"), "no front matter")

    def tearDown(self):
        shutil.rmtree(self.home, ignore_errors=True)

    test_user_skills = interop(discover_v2_user_skills, env={"HOME": home})
