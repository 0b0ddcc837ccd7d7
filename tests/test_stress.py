"""
The stress programs (tests/stress/), each run small as a child process:
their invariants asserted on the figures they print with --json. The
full-size runs and their figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

from tests.stress import largebad

ROOT = Path(__file__).resolve().parent.parent
#: A bound on a hang of one program, not a timing figure.
PROGRAM_TIMEOUT_SECONDS = 300


def run_program(name: str, *args: str) -> dict:
    """
    Run C{python -m tests.stress.NAME ARGS --json}; its figures.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", f"tests.stress.{name}", *args, "--json"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=PROGRAM_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise AssertionError(f"{name} exited with {done.returncode}: "
                             f"{done.stderr.decode(errors='replace')[-3000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


class LoadTests(unittest.TestCase):
    def test_sessions_leave_nothing_behind(self):
        figures = run_program("load", "--sessions", "20", "--cycles", "2", "--no-idle")
        ours = figures["ours"]
        self.assertEqual(
            (ours["failed_sessions"], ours["log_problems"], ours["alive"],
             ours["growth"]["zombies"], ours["growth"]["children"] <= 0,
             ours["growth"]["fds"] <= 0, figures["ok"]),
            (0, [], True, 0, True, True, True))


class FaultTests(unittest.TestCase):
    def test_cuts_lose_and_repeat_nothing(self):
        figures = run_program("faults", "--runs", "2", "--comparison-runs", "0",
                              "--relay-runs", "1", "--mib", "4", "--executor", "ours")
        for name in ("ours, WebSocket, output acknowledged", "relay, ours executor"):
            path = figures[name]
            self.assertGreater(path["cuts"], 0, name)
            self.assertEqual(
                {key: path[key] for key in ("lost", "corrupted", "missing_writes",
                                            "duplicated_writes", "session_failed", "stuck",
                                            "log_problems")},
                {"lost": 0, "corrupted": 0, "missing_writes": 0, "duplicated_writes": 0,
                 "session_failed": 0, "stuck": 0, "log_problems": []}, name)
            self.assertEqual(path["delivered_exactly"], path["expected"], name)
        self.assertTrue(figures["ok"])


class MemoryTests(unittest.TestCase):
    def test_memory_is_given_back(self):
        figures = run_program("memory", "--floods", "1", "--connections", "2", "--mib", "2",
                              "--idle", "1", "--stdin-mib", "32")
        for label in ("ours, allocator tuned", "ours, glibc defaults"):
            self.assertEqual(figures[label]["log_problems"], [], label)
        stdin = figures["stdin ours"]
        # 32 MiB were queued; at least half of it is gone after terminate.
        self.assertGreater(stdin["queued"] - stdin["before"], 16)
        self.assertLess(stdin["terminated"] - stdin["before"],
                        (stdin["queued"] - stdin["before"]) / 2)
        self.assertEqual(stdin["log_problems"], [])


class FuzzTests(unittest.TestCase):
    def test_fuzzed_input_harms_nothing(self):
        figures = run_program("fuzz", "--messages", "4000", "--frames", "4000", "--no-reference")
        for name in ("rpc ours", "relay ours executor"):
            result = figures[name]
            self.assertGreaterEqual(result["counts"]["messages"], 4000, name)
            self.assertEqual(
                (result["alive"], result["log_problems"], result["counts"]["stuck"],
                 result["victim"]["wrong"], result["victim"]["lost"], result["final_answer_ok"]),
                (True, [], 0, 0, False, True), name)
            self.assertGreater(result["victim"]["requests"], 0, name)
        self.assertTrue(figures["ok"])


class LargeBadTests(unittest.TestCase):
    def test_large_malformed_messages_get_the_reference_answers(self):
        figures = run_program("largebad", "--mib", "2")
        for kind in ("ours", "reference"):
            self.assertEqual((figures[kind]["alive"], figures[kind]["log_problems"]),
                             (True, []), kind)
        for name, shape in figures["ours"]["shapes"].items():
            reference = figures["reference"]["shapes"][name]
            self.assertEqual(largebad._detail(shape["answer"]),
                             largebad._detail(reference["answer"]), name)
            self.assertIsNotNone(shape["answer"], name)
            self.assertEqual((shape["victim"]["wrong"], shape["victim"]["lost"]), (0, False),
                             name)


class ScratchBoundTests(unittest.TestCase):
    """
    The fuzzers' scratch tree is emptied once it is over its bound, and
    only then; what its links point to is left alone.
    """

    def setUp(self):
        from tests.stress import fuzzing
        self.patch(fuzzing, "SCRATCH_BOUND_ENTRIES", 4)
        self.patch(fuzzing, "SCRATCH_BOUND_BYTES", 1000)
        self.outside = self.mktemp()
        os.mkdir(self.outside)
        with open(os.path.join(self.outside, "kept"), "wb") as f:
            f.write(b"x")
        self.scratch = self.mktemp()
        os.makedirs(os.path.join(self.scratch, "a", "b"))
        os.symlink(self.outside, os.path.join(self.scratch, "link"))
        self.bound = fuzzing.ScratchBound(self.scratch)

    def test_within_the_bound_nothing_is_removed(self):
        self.bound.trim()
        self.assertEqual((sorted(os.listdir(self.scratch)), self.bound.trims), (["a", "link"], 0))

    def test_too_many_entries(self):
        for name in "cd":
            open(os.path.join(self.scratch, "a", name), "w").close()
        self.bound.trim()
        self.assertEqual((os.listdir(self.scratch), self.bound.trims), ([], 1))
        self.assertEqual(os.listdir(self.outside), ["kept"])

    def test_too_many_bytes(self):
        with open(os.path.join(self.scratch, "a", "b", "big"), "wb") as f:
            f.write(b"x" * 1001)
        self.bound.trim()
        self.assertEqual((os.listdir(self.scratch), self.bound.trims), ([], 1))
        self.assertEqual(os.listdir(self.outside), ["kept"])

    def test_a_removed_tree_is_within_the_bound(self):
        os.rename(self.scratch, self.scratch + "-gone")
        self.bound.trim()
        self.assertEqual(self.bound.trims, 0)
