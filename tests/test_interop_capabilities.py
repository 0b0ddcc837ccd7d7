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
