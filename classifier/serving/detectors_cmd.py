"""``tierwise detectors install|scan``: add or refresh a bundle's detector rules, and try them.

``install BUNDLE [--gitleaks PATH]`` builds ``detectors.json`` from a gitleaks config (default:
the shared data's ``gitleaks/gitleaks.toml``) and writes it into the bundle directory through
``bundle.update_bundle_file``, so the manifest re-hashes it (a tampered bundle is refused first).
``scan BUNDLE [--text T | --jsonl FILE]`` prints, per prompt, the detector hits as JSON (rule,
class, offsets), never the matched text. Left out: archives (install into the directory, then
pack it) and editing single rules (rebuild from an edited gitleaks config instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from classifier.errors import BundleError, ConfigError


def add_install_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument("--gitleaks", type=Path, default=None,
                        help="gitleaks.toml to compile the rules from (default: $TIERWISE_SHARED_DATA/gitleaks/gitleaks.toml)")
    parser.add_argument("--no-bare", dest="bare", action="store_false",
                        help="gitleaks' rules only: no '<id>-bare' rules for provider tokens without the provider's name")
    parser.add_argument("--pii", default=None, metavar="A,B",
                        help="personal-data rules to ship (default: every rule but date-of-birth, which is opt-in: "
                             "a date alone is a quasi-identifier; add it with e.g. --pii email,phone,date-of-birth)")


def run_install(args: argparse.Namespace) -> int:
    from classifier.serving import bundle as bundle_io
    from classifier.serving.detectors import (
        DETECTORS_FILE,
        PII_RULES,
        Detectors,
        build_rules,
        default_gitleaks_path,
        rules_bytes,
    )

    if not Path(args.bundle).is_dir():
        raise BundleError(f"{args.bundle}: not a bundle directory (unpack an archive first)")
    source = args.gitleaks or default_gitleaks_path()
    pii = PII_RULES if args.pii is None else tuple(x.strip() for x in args.pii.split(",") if x.strip())
    data = rules_bytes(build_rules(source, pii=pii, bare=args.bare))
    detectors = Detectors.from_bytes(data)  # what the runtime will load: check it compiles before writing
    old = bundle_io.verify_bundle(args.bundle).files.get(DETECTORS_FILE)
    manifest = bundle_io.update_bundle_file(args.bundle, DETECTORS_FILE, data)
    info = detectors.info()
    sys.stdout.write(json.dumps({
        "bundle": str(args.bundle), "file": DETECTORS_FILE, "sha256": manifest.files[DETECTORS_FILE],
        "replaced": old, "version": info["version"], "credential_rules": info["credential_rules"],
        "pii_rules": info["pii_rules"], "compiled_from": str(source),
    }, indent=2) + "\n")
    return 0


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, nargs="?", default=None,
                        help="bundle directory whose detectors.json to use (or give --gitleaks)")
    parser.add_argument("--gitleaks", type=Path, default=None, help="compile rules from this gitleaks.toml instead")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="one prompt")
    src.add_argument("--jsonl", type=Path, help="JSONL file with a 'text' field per line")


def run_scan(args: argparse.Namespace) -> int:
    from classifier.serving import bundle as bundle_io
    from classifier.serving.detectors import DETECTORS_FILE, Detectors, build_rules

    if args.gitleaks is not None:
        detectors = Detectors(build_rules(args.gitleaks))
    elif args.bundle is not None:
        _, files = bundle_io.load_verified(args.bundle)
        if DETECTORS_FILE not in files:
            raise BundleError(f"{args.bundle} has no {DETECTORS_FILE}; run `tierwise detectors install {args.bundle}`")
        detectors = Detectors.from_bytes(files[DETECTORS_FILE])
    else:
        raise ConfigError("give a bundle or --gitleaks")
    if args.text is not None:
        texts = [args.text]
    else:
        texts = []
        for n, line in enumerate(Path(args.jsonl).read_text(encoding="utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{args.jsonl}:{n}: expected a JSON object with a 'text' field ({exc!r})") from None
    for i, text in enumerate(texts):
        hits = [h.to_dict() for h in detectors.scan(text)]
        sys.stdout.write(json.dumps({"index": i, "detections": hits}) + "\n")
    return 0
