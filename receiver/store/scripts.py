"""The Lua scripts that make every state change one atomic Redis step, loaded once.

Each script is a file of `lua/`. What it runs is a header of one line, generated from
`keys.py` and `codes.py` (the names of statuses, answers, kinds of work and KEYS, so that
Lua and Python spell them once), then for the scripts that work on jobs `lua/prelude.lua`,
then the file. A Lua error's `user_script:<line>` is told again as the file and line it
comes from.

A script is given every key it touches in KEYS (a Redis Cluster routes it by them, and
refuses one whose keys span slots). With `strict`, the header checks that: a command on a
key the script was not given fails the script (the tests run every script so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from receiver.store.codes import lua_tables
from receiver.store.keys import JOB_KEYS, SHARED_KEYS, Keys

# The scripts that work on jobs: they run after the prelude, and are given their keys and
# jobs as it says; each job's keys only those the script touches, of JOB_KEYS (the prelude's
# functions too: `finish` deletes `early`, `apply` writes `tasks` and `errors`), in their
# order. The strict header fails a script that reaches one it was not given.
JOB_SCRIPTS: dict[str, tuple[str, ...]] = {
    "callbacks": ("hash", "tasks", "errors", "early"),
    "create_job": ("hash",),
    "record_submission": ("hash", "tasks", "inputs", "errors", "early"),
    "task_outcomes": ("hash", "tasks", "errors", "results", "early"),
    "record_failure": ("hash", "attempts"),
    "finish_job": ("hash", "early"),
    "update_jobs": ("hash", "attempts"),
    "reopen_job": ("hash", "tasks", "errors", "attempts"),
}
OTHER_SCRIPTS = ("claim_due", "renew_leases", "acquire_rate", "hint_poll")
# Commands whose first argument is no key.
_KEYLESS = ("PUBLISH", "SPUBLISH", "TIME")
_LINE = re.compile(r"user_script:(\d+)")


def source(name: str) -> str:
    return resources.files("receiver.store").joinpath("lua", f"{name}.lua").read_text()


def _lua_string(text: str) -> str:
    """A Lua string literal of `text`, whatever it holds."""
    plain = "_:-.{}"
    chars = (
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in plain) else f"\\{b:03d}"
        for b in text.encode()
    )
    return '"' + "".join(chars) + '"'


def _lua_table(values: Sequence[str] | Mapping[str, str]) -> str:
    if isinstance(values, Mapping):
        pairs = (f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in values.items())
        return "{" + ", ".join(pairs) + "}"
    return "{" + ", ".join(_lua_string(v) for v in values) + "}"


def header(keys: Keys, *, strict: bool = False, job_keys: tuple[str, ...] = JOB_KEYS) -> str:
    """The first line of every script: the shared names (`job_keys`: those of a job the
    script is given), and `call` (redis.call, checked against KEYS when `strict`). One line,
    so that the lines of a file keep their numbers but for one."""
    parts = [
        "local function _closed(t, what) return setmetatable(t, {__index = function(_, name)"
        " error('no ' .. what .. ' named ' .. tostring(name)) end}) end",
    ]
    for name, table in lua_tables().items():
        parts.append(f"local {name} = _closed({_lua_table(table)}, {_lua_string(name)})")
    parts.append(f"local SHARED_KEY_NAMES = {_lua_table(SHARED_KEYS)}")
    parts.append(f"local JOB_KEY_NAMES = {_lua_table(job_keys)}")
    parts.append(f"local CHANNEL = {_lua_string(keys.channel)}")
    parts.append(f"local JOB_CHANNEL = {_lua_string(keys.channel_of(''))}")
    if strict:
        parts.append(
            "local call do local given, raw = {}, redis.call"
            f" local keyless = {{{', '.join(f'{c} = true' for c in _KEYLESS)}}}"
            " for _, key in ipairs(KEYS) do given[key] = true end"
            " call = function(command, ...) local key = ..."
            " if not keyless[string.upper(command)] and not given[key] then"
            " error('script reached key ' .. tostring(key) .. ' not given in KEYS') end"
            " return raw(command, ...) end end"
        )
    else:
        parts.append("local call = redis.call")
    line = " ".join(parts)
    assert "\n" not in line
    return line


class Script:
    """One script registered on a client: called as redis-py's scripts are (EVALSHA, loaded
    again on NOSCRIPT), its errors located in its files."""

    def __init__(self, redis: Redis, name: str, keys: Keys, *, strict: bool = False) -> None:
        self.name = name
        # The keys of each job it is given (a job script), in JOB_KEYS' order.
        self.job_keys = JOB_SCRIPTS.get(name, ())
        files = [("<header>", header(keys, strict=strict, job_keys=self.job_keys or JOB_KEYS))]
        if name in JOB_SCRIPTS:
            files.append(("prelude.lua", source("prelude")))
        files.append((f"{name}.lua", source(name)))
        # (first line of the file in the script, the file's name)
        self._files: list[tuple[int, str]] = []
        lines = 1
        for filename, text in files:
            self._files.append((lines, filename))
            lines += text.count("\n") + (0 if text.endswith("\n") else 1)
        self.text = "\n".join(text.rstrip("\n") for _, text in files) + "\n"
        self._script = redis.register_script(self.text)

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any], client: Any = None) -> Any:
        try:
            return await self._script(keys=keys, args=args, client=client)
        except ResponseError as exc:
            if "user_script:" not in str(exc):
                raise
            raise type(exc)(self.located(str(exc))) from exc

    def located(self, message: str) -> str:
        """The message with each `user_script:<line>` told as `<file>:<line>`."""

        def where(match: re.Match[str]) -> str:
            line = int(match.group(1))
            first, filename = max((f for f in self._files if f[0] <= line), default=(1, "?"))
            return f"receiver/store/lua/{filename}:{line - first + 1}"

        return _LINE.sub(where, message)


class Scripts:
    """Every script, registered once on one client."""

    def __init__(self, redis: Redis, keys: Keys, *, strict: bool = False) -> None:
        def load(name: str) -> Script:
            return Script(redis, name, keys, strict=strict)

        self.callbacks = load("callbacks")
        self.create_job = load("create_job")
        self.record_submission = load("record_submission")
        self.task_outcomes = load("task_outcomes")
        self.record_failure = load("record_failure")
        self.finish_job = load("finish_job")
        self.update_jobs = load("update_jobs")
        self.reopen_job = load("reopen_job")
        self.claim_due = load("claim_due")
        self.renew_leases = load("renew_leases")
        self.acquire_rate = load("acquire_rate")
        self.hint_poll = load("hint_poll")
