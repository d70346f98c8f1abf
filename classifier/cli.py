"""The ``tierwise`` console script.

Subcommands are listed here with their help line and the module that implements them; a module is
imported only when its subcommand runs (so ``tierwise route`` never imports torch). Each
implementing module exposes ``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int``.
User errors (``TierwiseError``) are printed as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# command words -> (module, function stem, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("data", "build"): ("classifier.data.builder", "build", "build the default routing data set from ../shared/datasets"),
    ("data", "validate"): ("classifier.data.loading", "validate", "check a labelled data file and report every bad row"),
    ("baseline",): ("classifier.evaluation.baselines", "baseline", "fit and evaluate majority, keyword and TF-IDF baselines"),
    ("train",): ("classifier.training.trainer", "train", "fine-tune the multi-head encoder, tracked in MLflow"),
    ("tune",): ("classifier.training.hpo", "tune", "search hyper-parameters with Optuna (nested MLflow runs)"),
    ("calibrate",): ("classifier.evaluation.calibrate_cmd", "calibrate", "fit temperatures and risk-controlled thresholds"),
    ("export",): ("classifier.training.export", "export", "export a trained model to a verified ONNX bundle"),
    ("distill",): ("classifier.training.distillation", "distill", "distil the encoder into a sub-millisecond student bundle"),
    ("cascade",): ("classifier.evaluation.cascade_cmd", "cascade", "fit a student bundle's escalation band to a teacher bundle"),
    ("route",): ("classifier.route_cmd", "route", "route one prompt or a JSONL file with a bundle"),
    ("serve",): ("classifier.serving.app", "serve", "serve a bundle over HTTP"),
    ("report",): ("classifier.evaluation.report", "report", "write the policy owners' evaluation report"),
    ("drift",): ("classifier.evaluation.drift", "drift", "compare live routing against a reference and flag drift"),
    ("audit", "verify"): ("classifier.serving.audit", "verify", "check an audit log's chain, key and checkpoints"),
    ("audit", "keygen"): ("classifier.serving.audit", "keygen", "write a new audit (or prompt digest) key"),
    ("keygen",): ("classifier.serving.signing", "keygen", "write a new Ed25519 bundle signing key pair"),
    ("sign",): ("classifier.serving.signing", "sign", "sign a bundle's manifest (Ed25519) for --trusted-key routers"),
    ("detectors", "install"): ("classifier.serving.detectors_cmd", "install", "add or refresh a bundle's detector rules (gitleaks)"),
    ("detectors", "scan"): ("classifier.serving.detectors_cmd", "scan", "run a bundle's detectors on text (rule names and spans, never the text)"),
    ("eval", "long-prompts"): ("classifier.evaluation.long_prompts", "long_prompts", "measure the model views on wrapped long prompts"),
    ("eval", "positions"): ("classifier.evaluation.long_prompts", "positions", "recall of planted credentials/pii by position in long requests"),
    ("adapt",): ("classifier.training.adapt", "adapt", "refit the tier head on your own outcomes into a new bundle version"),
    ("feedback", "join"): ("classifier.training.feedback", "join", "join decision logs, prompts and outcomes into training rows"),
    ("policy", "check"): ("classifier.serving.policy_cmd", "check", "validate a routing policy file (and against a bundle's label schema)"),
    ("policy", "schema"): ("classifier.serving.policy_cmd", "schema", "write the JSON Schema of a routing policy file (for editors)"),
    ("eval", "real-traffic"): ("classifier.evaluation.real_traffic", "real_traffic", "false sensitivity flags on held-out real user prompts"),
}


def _top_level_help() -> str:
    lines = ["usage: tierwise <command> [options]", "", "commands:"]
    for words, (_, _, help_) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {help_}")
    lines += ["", "Run 'tierwise <command> --help' for a command's options."]
    return "\n".join(lines)


def _match(argv: Sequence[str]) -> tuple[tuple[str, ...], list[str]] | None:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            return words, list(argv[n:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        sys.stdout.write(_top_level_help() + "\n")
        return 0
    if argv[0] in {"--version", "-V"}:
        from classifier import __version__

        sys.stdout.write(f"tierwise {__version__}\n")
        return 0
    matched = _match(argv)
    if matched is None:
        sys.stderr.write(f"tierwise: unknown command {' '.join(argv[:2])!r}\n\n{_top_level_help()}\n")
        return 2
    words, rest = matched
    module_name, stem, help_ = COMMANDS[words]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog="tierwise " + " ".join(words), description=help_)
    getattr(module, f"add_{stem}_arguments")(parser)
    args = parser.parse_args(rest)
    from classifier.errors import TierwiseError

    try:
        return int(getattr(module, f"run_{stem}")(args) or 0)
    except TierwiseError as exc:
        sys.stderr.write(f"tierwise {' '.join(words)}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
