"""
The end-to-end harness: the real codex CLI, driven by a scripted model,
runs its tools through an exec-server.

    scenario.py    ToolCall, Scenario: which tools the model calls, turn by turn
    scenarios.py   the suite's scenarios (commands, terminal, files)
    model.py       the scripted model: the Responses API over HTTP, server-sent events
    targets.py     Target = server (reference, ours) + connection (ws, stdio) + options
    runner.py      run_codex(scenario, target): one real codex run, its tool outputs
    normalize.py   what is random by nature, replaced by placeholders
    compare.py     ours against the reference, with the documented differences

A new server configuration is a new L{targets.Target}: an option (codex
configuration such as C{sandbox_mode}, server arguments, ignored signals)
or a new connection class whose C{attach} starts what codex connects to
and returns the environment variables and C{environments.toml} tables that
lead codex there. tests/test_codex_e2e.py compares each scenario through
L{targets.pair}. docs/codex-e2e.md has what codex does on the wire.
"""
