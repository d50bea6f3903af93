"""`killswitch config --check [VERB]`: the config file checked for every verb (or one), and
every resolved setting printed with where it came from.

Refuses (exit 2, one line each) every key no verb takes, naming the closest known key, and
every value the table's converter refuses; prints nothing it could not check. It reads the
config file and the environment and nothing else (no Redis, no key or limits file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from killswitch.cli.settings import check_together
from killswitch.core.settings.options import VERBS, options_of
from killswitch.runtime.config import (
    ConfigError,
    ListenAddr,
    Resolver,
    load_config_file,
    unknown_keys,
)
from killswitch.store.redisurl import scrub

EXIT_OK, EXIT_USAGE = 0, 2


def check_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Exit 0 when the file holds only known keys and good values, else 2."""
    if not args.check:
        raise ConfigError("check: give --check (killswitch config --check [--config PATH] [VERB])")
    path = args.config or env.get("KILLSWITCH_CONFIG")
    config = load_config_file(path)  # an unreadable or non-TOML file: ConfigError, exit 2
    problems = unknown_keys(config)
    lines = [f"config file: {path or '(none: give --config PATH or set KILLSWITCH_CONFIG)'}"]
    for verb in [args.verb] if args.verb else [v for v in VERBS if v != "config"]:
        # The common flags given to `config` (--node, --redis, ...) count for every verb.
        flags = {o.attr: getattr(args, o.attr, None) for o in options_of("config")}
        r = Resolver(flags, env=env, config=config, section=verb)
        for o in options_of(verb):
            if o.flags_only:
                continue
            try:
                value = r.get(o.name)
            except ConfigError as e:
                problems.append(f"[{verb}] {e}")
                continue
            found = r.source(o.name, o)
            where = f"{found[0]} {found[1]}" if found else "default"
            if found is None and value is None:
                where = f"default ({o.default_text()})" if o.default_text() else "not set"
            lines.append(f"[{verb}] {o.name} = {shown(value)}  ({where})")
        if not any(p.startswith(f"[{verb}] ") for p in problems):  # each value is good
            try:
                check_together(r)
            except ConfigError as e:
                problems.append(f"[{verb}] {e}")
    for problem in problems:
        print(scrub(f"killswitch config: {problem}"), file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print(scrub("\n".join(lines)))  # a Redis URL's password is never printed
    return EXIT_OK


def shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, ListenAddr):
        return str(value)
    if isinstance(value, tuple | list | frozenset):  # a --fix route is a (listen, upstream)
        return json.dumps(
            ["=".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value]
        )
    return json.dumps(value) if isinstance(value, str | bool) else str(value)
