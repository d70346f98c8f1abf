"""``tierwise policy check|schema``: validate a routing policy file, and write its JSON Schema.

``check FILE [--schema-of BUNDLE]`` reads a policy YAML with ``Policy.from_yaml`` (every error
names the field path at fault) and, given a bundle, checks it against the bundle's label schema
too; it prints the policy's version and tiers. ``schema [--out PATH]`` writes the JSON Schema of
a policy file (``classifier/serving/policy.schema.json``, linked from ``serving/``, is this
output; a test keeps the two equal) for editors: a policy YAML whose first line is
``# yaml-language-server: $schema=policy.schema.json`` is validated as you type. Left out:
editing policies (edit the YAML, or the typed ``Policy`` and ``to_yaml``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def schema_text() -> str:
    from classifier.serving.policy import policy_json_schema

    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"


def add_schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="write the schema here (default: stdout)")


def run_schema(args: argparse.Namespace) -> int:
    if args.out is None:
        sys.stdout.write(schema_text())
    else:
        args.out.write_text(schema_text(), encoding="utf-8")
    return 0


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", type=Path, help="policy YAML")
    parser.add_argument("--schema-of", type=Path, default=None, metavar="BUNDLE",
                        help="also check it against this bundle's label schema (heads and classes it names)")


def run_check(args: argparse.Namespace) -> int:
    from classifier.serving.policy import Policy, PolicyEngine

    policy = Policy.from_yaml(args.policy)
    if args.schema_of is not None:
        from classifier.data.schema import LabelSchema
        from classifier.serving.bundle import SCHEMA_FILE

        PolicyEngine(policy, LabelSchema.from_yaml(args.schema_of / SCHEMA_FILE))
    sys.stdout.write(f"{args.policy}: valid policy version {policy.version} (tiers {policy.tier_names})\n")
    return 0
