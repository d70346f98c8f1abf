"""Traffic-shaped sensitivity data: what real requests look like when they carry nothing sensitive,
and sensitive text planted inside such requests.

The templates in ``sensitivity.py`` teach the model what personal data and credentials look like,
but the only secret-free code they have is MBPP, so ordinary coding requests read as "credential"
(the teacher blocked about 8% of real Chatbot Arena prompts). This module adds, as ``none``:

- **real user prompts** (arena-hard v0.1/v2.0, RouterArena): a seeded share of them is *held out*
  as the real-traffic evaluation set (``data/build/eval/real_traffic.parquet``, never trained on);
  the rest go to train/validation/calibration. Prompts whose text a simple scan finds an e-mail
  address, a phone-like number or a key-like token in are left out of training (they are kept
  in the evaluation set, where every flag is read);
- **secret-free code**: functions cut from the source of permissively licensed packages installed
  beside tierwise (BSD/MIT/Apache: see ``CODE_PACKAGES``), wrapped in an ordinary request, plus
  short snippets in other languages (Verilog, Prolog, Kotlin/JNI, Go, Rust, SQL, ...);
- **generated look-alikes**: configuration files with placeholders, stack traces, logs with request
  ids, hashes, UUIDs and commit SHAs, API docs that *mention* keys, tool schemas (BFCL live);
- **planted copies** (training split only): training ``pii``/``credential`` texts inserted at a
  random position of a benign context (code, logs, a tool schema, a real prompt), labels unchanged,
  so a secret in the middle of a long request is learnt as such.

Every unit (real prompt, package file, generator kind and index block, BFCL row) is assigned to one
split, so nothing crosses a split. Held-out splits of the existing data are untouched: these rows
are added to train/validation/calibration only, never to test or ood, so in-distribution numbers
stay comparable with earlier builds.

Left out: user turns of BFCL live requests are not used as negatives (many carry real addresses
and names); they go to the real-traffic evaluation set instead. No network, no downloads.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field, NonNegativeInt

from classifier.data.normalize import clean_text, dedup_key
from classifier.data.sources import RejectLog, read_traffic
from classifier.errors import TypedConfig

log = logging.getLogger(__name__)

# Installed packages whose source is cut into code prompts: permissive licences only (checked by
# name here; their LICENSE files ship in site-packages). Packages that ship crypto test vectors
# or sample credentials are not listed.
CODE_PACKAGES: tuple[str, ...] = (
    "click", "jinja2", "markupsafe", "yaml", "tqdm", "packaging", "numpy", "sklearn", "pandas",
    "sqlalchemy", "alembic", "flask", "werkzeug", "attr", "idna", "pyarrow", "optuna", "fastapi",
    "starlette", "pydantic", "httpx", "matplotlib", "scipy",
)
# splits the new rows may take (never test or ood: those stay as they were)
BENIGN_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.07, "calibration": 0.13}

# A quick scan for real prompts that may carry personal data or a key: such prompts are not used
# as training negatives (the evaluation set keeps them; its flags are read by a person).
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<!\w)(?:\+?\d[\d ().-]{8,}\d)(?!\w)")
_KEYLIKE = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z0-9_\-]{24,})(?=[^\s]*\d)(?=[^\s]*[A-Za-z])[A-Za-z0-9_\-]{24,}")


class BenignConfig(TypedConfig):
    """How much of each kind. Validated on creation."""

    model_config = ConfigDict(frozen=True)
    _path: ClassVar[str] = "benign"

    enabled: bool = True
    real_eval_share: float = Field(0.4, ge=0.0, le=1.0)  # share of real prompts held out as the real-traffic evaluation set
    code_snippets: NonNegativeInt = 2500
    other_language_snippets: NonNegativeInt = 400
    generated_per_kind: NonNegativeInt = 250
    bfcl_schemas: NonNegativeInt = 600
    planted_per_class: NonNegativeInt = 1500  # training pii/credential texts planted in a benign context
    named_prompts: NonNegativeInt = 1500  # ordinary requests naming public figures (classifier/data/named.py)
    curated_bfcl: bool = True  # BFCL simple_python/irrelevance user turns (not the live ones: those are evaluation)
    max_chars: int = Field(1500, ge=200)
    # a planted text must fit the model's training window (128 tokens, ~3-4 characters a token in
    # code): past it the label would describe text the model never sees
    planted_max_chars: int = 420


def _h(*key: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, key)).encode()).digest()[:8], "little")


def _rng(seed: int, *key: object) -> np.random.Generator:
    return np.random.default_rng([seed, _h(*key) % (2**32)])


def _split_of(seed: int, unit: str, fractions: Mapping[str, float] = BENIGN_FRACTIONS) -> str:
    """A unit's split from a seeded hash of its name: stable whatever else is in the build."""
    u = (_h(seed, "benign-split", unit) % 10_000) / 10_000
    acc = 0.0
    for name, share in fractions.items():
        acc += share
        if u < acc:
            return name
    return next(reversed(list(fractions)))


def may_be_sensitive(text: str) -> bool:
    """True when a quick scan finds an e-mail address, a phone-like number or a key-like token."""
    return bool(_EMAIL.search(text) or _PHONE.search(text) or _KEYLIKE.search(text))


def bfcl_user_turns(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(item, its last user turn, cleaned) of each BFCL JSON line in ``path``; lines that do not
    parse or hold no non-empty user string are skipped."""
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        turns = (item.get("question") or []) if isinstance(item, dict) else []
        users = [m.get("content") for turn in (turns if isinstance(turns, list) else [])
                 for m in (turn if isinstance(turn, list) else [])
                 if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)]
        if users and users[-1].strip():
            yield item, clean_text(users[-1])


def _row(text: str, source: str, source_task: str, split: str, group: str, task: str | None = None) -> dict[str, Any]:
    return {"text": text, "source": source, "source_task": source_task, "split": split, "group": group,
            "task": task, "sensitivity": "none", "tier": None, "tier_outcome": None, "output_tokens": None}


# ---------------------------------------------------------------------------------------------
# real user prompts


def real_prompts(root: Path, rejects: RejectLog, seed: int, config: BenignConfig,
                 exclude_keys: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out evaluation rows) from arena-hard, RouterArena and BFCL live user turns.

    A prompt already in the data set (RouterArena draws from MMLU, GSM8K, ...) is skipped."""
    train: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    seen = set(exclude_keys)
    for r in read_traffic(root, rejects):
        key = dedup_key(r["text"])
        if key in seen:
            continue
        seen.add(key)
        unit = f"real:{key[:16]}"
        if (_h(seed, "real-eval", unit) % 10_000) / 10_000 < config.real_eval_share:
            held.append({"text": r["text"], "source": r["source"], "source_task": r["source_task"],
                         "sensitivity": "none"})
        elif not may_be_sensitive(r["text"]):
            split = _split_of(seed, unit)
            train.append(_row(r["text"], "real_prompt", r["source_task"], split, unit, r.get("task")))
    for path in sorted((root / "bfcl").glob("BFCL_v4_live_*.json")):
        for item, text in bfcl_user_turns(path):
            key = dedup_key(text)
            if key in seen:
                continue
            seen.add(key)
            if (_h(seed, "bfcl-eval", item.get("id")) % 10_000) / 10_000 < config.real_eval_share:
                held.append({"text": text, "source": "bfcl_live", "source_task": f"bfcl:{path.stem}",
                             "sensitivity": "none"})
    return train, held


# ---------------------------------------------------------------------------------------------
# code


_CODE_ASKS = (
    "Can you explain what this function does?\n\n```python\n{code}\n```",
    "Refactor this to be more readable:\n\n```python\n{code}\n```",
    "Why might this code be slow? Suggest improvements.\n\n{code}",
    "Write unit tests for the following function.\n```\n{code}\n```",
    "I get a TypeError somewhere in here, can you spot it?\n\n```python\n{code}\n```",
    "Add type hints and a docstring to this:\n\n{code}",
    "{code}\n\nWhat does this return for an empty input?",
    "Port this Python function to TypeScript:\n\n```python\n{code}\n```",
)


def _high_entropy_literal(code: str) -> bool:
    """A string literal that could be a key: long, mixed letters and digits."""
    return bool(_KEYLIKE.search(code)) or bool(_EMAIL.search(code))


def _functions(path: Path, max_lines: int = 40) -> list[str]:
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            n = node.end_lineno - node.lineno + 1
            if 4 <= n <= max_lines:
                body = "\n".join(lines[node.lineno - 1: node.end_lineno])
                out.append(_dedent(body))
    return out


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)


def code_prompts(seed: int, config: BenignConfig) -> list[dict[str, Any]]:
    """Functions from installed permissive packages, each in an ordinary code request."""
    files: list[tuple[str, Path]] = []
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(next(iter(spec.submodule_search_locations)))
        files += [(name, p) for p in sorted(base.rglob("*.py")) if "test" not in p.name]
    rng = _rng(seed, "code-files")
    order = rng.permutation(len(files))
    out: list[dict[str, Any]] = []
    per_file = 2
    for i in order:
        if len(out) >= config.code_snippets:
            break
        pkg, path = files[int(i)]
        funcs = [f for f in _functions(path) if not _high_entropy_literal(f) and len(f) <= config.max_chars - 120]
        if not funcs:
            continue
        unit = f"code:{pkg}:{path.name}"
        split = _split_of(seed, unit)
        frng = _rng(seed, unit)
        for j in frng.permutation(len(funcs))[:per_file]:
            ask = _CODE_ASKS[int(frng.integers(len(_CODE_ASKS)))]
            out.append(_row(ask.format(code=funcs[int(j)]), "code_negative", f"code:{pkg}", split, unit, "code"))
    return out


_OTHER_LANGS: tuple[tuple[str, str], ...] = (
    ("verilog", "write a verilog module for a {n}-deep fifo with {w}-bit data, full and empty flags"),
    ("verilog", "module counter(input clk, input rst, output reg [{w}:0] q);\n  always @(posedge clk) if (rst) q <= 0; else q <= q + 1;\nendmodule\nwhy does this not synthesise on my board?"),
    ("prolog", "Write code to parse an XML document using SWI Prolog and count the <{tag}> elements"),
    ("prolog", "ancestor(X, Y) :- parent(X, Y).\nancestor(X, Y) :- parent(X, Z), ancestor(Z, Y).\nHow do I stop this looping when the {tag} facts have a cycle?"),
    ("kotlin", "How do I keep internal C struct state in my Kotlin class when using JNI? The struct has {n} fields."),
    ("kotlin", "class {Tag}Repository(private val dao: {Tag}Dao) {{\n    suspend fun all(): List<{Tag}> = dao.getAll()\n}}\nHow do I unit test this with coroutines?"),
    ("go", "func worker(id int, jobs <-chan int, results chan<- int) {{\n\tfor j := range jobs {{ results <- j * {n} }}\n}}\nHow many goroutines should I start for {n} jobs?"),
    ("rust", "fn parse_{tag}(input: &str) -> Result<Vec<u{w}>, ParseIntError> {{\n    input.split(',').map(|s| s.trim().parse()).collect()\n}}\nwhy does the compiler complain about the error type?"),
    ("sql", "SELECT c.id, COUNT(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.created_at > NOW() - INTERVAL '{n} days' GROUP BY c.id;\nThis drops customers with no orders, why?"),
    ("javascript", "const {tag}s = await fetch(`/api/{tag}s?page=${{page}}`).then(r => r.json());\nHow do I cancel this request when the component unmounts?"),
    ("c", "struct {tag} {{ int len; char data[{n}]; }};\nvoid copy(struct {tag} *dst, const char *src) {{ strcpy(dst->data, src); }}\nIs this safe?"),
    ("java", "public class {Tag}Service {{\n  private final Map<String, {Tag}> cache = new HashMap<>();\n  public {Tag} get(String id) {{ return cache.computeIfAbsent(id, this::load); }}\n}}\nMake this thread-safe."),
    ("bash", "for f in *.{tag}; do convert \"$f\" -resize {n}x{n} \"thumb_$f\"; done\nhow do I run this in parallel with xargs?"),
    ("haskell", "fold{Tag} :: (a -> b -> b) -> b -> [a] -> b\nExplain the difference between foldr and foldl' for a list of {n} elements."),
    ("regex", "Write a regex that matches {tag} tokens like `ghp_` followed by {n} alphanumeric characters, for a log scrubber."),
    ("regex", "What's a regular expression for AWS access key ids (they start with AKIA and have {w} more characters)? I want to grep our repo for leaks."),
)
_TAGS = ("item", "user", "order", "invoice", "sensor", "packet", "record", "book", "ticket", "frame", "node", "event")


def other_language_prompts(seed: int, config: BenignConfig) -> list[dict[str, Any]]:
    """Short code requests in other languages, including ones that *talk about* keys and tokens."""
    out: list[dict[str, Any]] = []
    for i in range(config.other_language_snippets):
        rng = _rng(seed, "lang", i)
        k = int(rng.integers(len(_OTHER_LANGS)))
        lang, tmpl = _OTHER_LANGS[k]
        tag = _TAGS[int(rng.integers(len(_TAGS)))]
        text = tmpl.format(n=int(rng.choice([4, 8, 16, 32, 64, 128])), w=int(rng.choice([7, 8, 15, 16, 31, 32])),
                           tag=tag, Tag=tag.capitalize())
        unit = f"lang:{k}"  # one template = one unit, so a template is on one split only
        out.append(_row(text, "code_negative", f"code:{lang}", _split_of(seed, unit), unit, "code"))
    return out


# ---------------------------------------------------------------------------------------------
# generated look-alikes


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[int(i)] for i in rng.integers(16, size=n))


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=bytes(int(b) for b in rng.integers(256, size=16)), version=4))


_PLACEHOLDER_VALUES = ("<your-api-key>", "YOUR_API_KEY_HERE", "${API_TOKEN}", "changeme", "xxxxxxxxxxxxxxxx",
                       "<redacted>", "{{ secrets.DEPLOY_TOKEN }}", "$(cat /run/secrets/db_password)", "replace-me",
                       "sk-...", "********", "os.environ['OPENAI_API_KEY']", "<TOKEN>", "REPLACE_WITH_REAL_KEY")
_SERVICES = ("OPENAI", "STRIPE", "GITHUB", "SLACK", "DATADOG", "SENTRY", "TWILIO", "AWS", "DATABASE", "REDIS")


def _config(rng: np.random.Generator) -> str:
    lines = []
    for _ in range(int(rng.integers(3, 9))):
        svc = _SERVICES[int(rng.integers(len(_SERVICES)))]
        key = rng.choice(["API_KEY", "TOKEN", "SECRET", "PASSWORD", "URL", "HOST", "PORT", "TIMEOUT", "REGION"])
        if key in ("URL", "HOST"):
            val = f"https://{svc.lower()}.internal.example/v{int(rng.integers(1, 4))}"
        elif key in ("PORT", "TIMEOUT"):
            val = str(int(rng.integers(10, 9000)))
        elif key == "REGION":
            val = str(rng.choice(["eu-west-1", "us-east-2", "ap-south-1"]))
        else:
            val = _PLACEHOLDER_VALUES[int(rng.integers(len(_PLACEHOLDER_VALUES)))]
        lines.append(f"{svc}_{key}={val}")
    style = int(rng.integers(3))
    if style == 0:
        body = "\n".join(lines)
        return f"Here is my .env.example, why does docker compose not pick it up?\n\n{body}"
    if style == 1:
        body = "\n".join(f"  {ln.split('=')[0].lower()}: \"{ln.split('=', 1)[1]}\"" for ln in lines)
        return f"config.yaml:\n```yaml\nsettings:\n{body}\n```\nHow do I load this with pydantic-settings and env overrides?"
    body = "\n".join(f"    {ln.split('=')[0].lower()} = \"{ln.split('=', 1)[1]}\"" for ln in lines)
    return f"[tool.app]\n{body}\n\nIs it ok to commit this TOML template to git?"


_EXC = ("KeyError: 'user_id'", "ValueError: invalid literal for int() with base 10: 'abc'",
        "ConnectionRefusedError: [Errno 111] Connection refused", "AttributeError: 'NoneType' object has no attribute 'get'",
        "TimeoutError: timed out after 30.0s", "sqlalchemy.exc.IntegrityError: duplicate key value violates unique constraint",
        "ModuleNotFoundError: No module named 'torch'", "RecursionError: maximum recursion depth exceeded")
_FUNCS = ("handle_request", "load_config", "run", "main", "fetch_page", "_call", "process_batch", "save", "__call__")


def _traceback(rng: np.random.Generator) -> str:
    frames = []
    for _ in range(int(rng.integers(3, 8))):
        mod = rng.choice(["app/views.py", "app/models.py", "lib/python3.11/site-packages/requests/sessions.py",
                          "src/worker/tasks.py", "lib/python3.11/asyncio/base_events.py", "api/routes/users.py"])
        fn = _FUNCS[int(rng.integers(len(_FUNCS)))]
        frames.append(f'  File "/srv/{mod}", line {int(rng.integers(10, 900))}, in {fn}\n    result = {fn}(*args, **kwargs)')
    exc = _EXC[int(rng.integers(len(_EXC)))]
    return ("I keep getting this error, what is wrong?\n\nTraceback (most recent call last):\n"
            + "\n".join(frames) + f"\n{exc}")


def _log(rng: np.random.Generator) -> str:
    lines = []
    for _i in range(int(rng.integers(4, 12))):
        lvl = rng.choice(["INFO", "INFO", "WARN", "ERROR", "DEBUG"])
        path = rng.choice(["/api/v1/orders", "/healthz", "/api/v1/users/me", "/login", "/static/app.js"])
        lines.append(f"2026-0{int(rng.integers(1, 10))}-{int(rng.integers(10, 28))}T1{int(rng.integers(0, 9))}:"
                     f"{int(rng.integers(10, 59))}:{int(rng.integers(10, 59))}.{int(rng.integers(100, 999))}Z {lvl} "
                     f"request_id={_uuid(rng)} trace={_hex(rng, 16)} {rng.choice(['GET', 'POST'])} {path} "
                     f"status={rng.choice([200, 200, 201, 404, 500, 502])} dur={int(rng.integers(1, 2000))}ms")
    return "Why are these requests slow? Logs:\n\n" + "\n".join(lines)


def _hashes(rng: np.random.Generator) -> str:
    style = int(rng.integers(4))
    if style == 0:
        commits = "\n".join(f"commit {_hex(rng, 40)}\nAuthor: dev-bot <ci@builds.invalid>\n\n    "
                            f"{rng.choice(['fix flaky test', 'bump deps', 'refactor loader', 'add retries'])}\n"
                            for _ in range(int(rng.integers(2, 5))))
        return f"How do I squash these commits into one?\n\n{commits}"
    if style == 1:
        files = "\n".join(f"{_hex(rng, 64)}  dist/pkg-{int(rng.integers(1, 9))}.{int(rng.integers(0, 20))}.tar.gz"
                          for _ in range(int(rng.integers(2, 5))))
        return f"The sha256sum check fails on one of these, how do I find which?\n{files}"
    if style == 2:
        items = ",\n".join(f'  {{"id": "{_uuid(rng)}", "status": "{rng.choice(["ok", "failed", "queued"])}"}}'
                           for _ in range(int(rng.integers(2, 6))))
        return f"Parse this JSON in Go and count the failed ones:\n[\n{items}\n]"
    digest = _hex(rng, 64)
    return (f"docker pull fails with 'manifest unknown' for image registry.example/app@sha256:{digest}. "
            f"The tag points at layer {_hex(rng, 12)}. What does that mean?")


_DOCS = (
    "To authenticate, pass your API key in the `Authorization: Bearer <API_KEY>` header. Keys are created in the dashboard under Settings > API keys and can be revoked at any time.",
    "Set the `OPENAI_API_KEY` environment variable before running the script; never hard-code the key in source files.",
    "GitHub personal access tokens start with `ghp_`. If a token is leaked, revoke it at github.com/settings/tokens and rotate every secret that was stored next to it.",
    "Our rotation policy: access keys older than 90 days are disabled. Use `aws iam create-access-key` to issue a new key, update the secret in Vault, then delete the old key.",
    "Stripe secret keys (`sk_live_...`) must stay on the server; publishable keys (`pk_live_...`) can be used in the browser.",
    "What is the difference between an OAuth access token and a refresh token, and where should a single-page app keep each?",
    "Explain how JWT signature verification works and why `alg: none` must be rejected.",
    "How should I store database passwords for a Kubernetes deployment: Secrets, sealed-secrets or an external vault?",
    "Write a pre-commit hook that runs gitleaks on staged files and blocks the commit when it finds a secret.",
    "Our security review asks us to hash API keys at rest. Which hash should we use and how do we still look keys up?",
)


def generated_prompts(seed: int, config: BenignConfig) -> list[dict[str, Any]]:
    """Configs with placeholders, tracebacks, logs, hashes/UUIDs/SHAs and API docs, as ``none``."""
    kinds = {"config": _config, "traceback": _traceback, "log": _log, "hashes": _hashes}
    out: list[dict[str, Any]] = []
    for kind, make in kinds.items():
        for i in range(config.generated_per_kind):
            unit = f"gen:{kind}:{i // 10}"  # blocks of 10 so every split gets some of each kind
            text = make(_rng(seed, kind, i))
            out.append(_row(text, "generated_negative", f"generated:{kind}", _split_of(seed, unit), unit,
                            "code"))
    for i in range(config.generated_per_kind):
        rng = _rng(seed, "docs", i)
        k = int(rng.integers(len(_DOCS)))
        unit = f"gen:docs:{k}"
        lead = rng.choice(["", "Quick question. ", "From our internal wiki: ", "Summarise this for a new hire: "])
        out.append(_row(f"{lead}{_DOCS[k]}", "generated_negative", "generated:docs", _split_of(seed, unit), unit,
                        None))
    return out


# ---------------------------------------------------------------------------------------------
# tool schemas (BFCL live): what an agent's request carries besides the user turn


def tool_schema_prompts(root: Path, seed: int, config: BenignConfig) -> list[dict[str, Any]]:
    """The tools offered with BFCL live requests, rendered as a system prompt would carry them."""
    out: list[dict[str, Any]] = []
    for path in sorted((root / "bfcl").glob("BFCL_v4_live_*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if len(out) >= config.bfcl_schemas:
                return out
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            funcs = item.get("function") or []
            if not funcs:
                continue
            rng = _rng(seed, "bfcl", item.get("id"))
            if rng.random() > 0.35:
                continue
            tools = json.dumps([{"type": "function", "function": f} for f in funcs[:4]], ensure_ascii=False)
            text = ("You are a helpful assistant that can call tools. Use them when needed.\n\nTools:\n" + tools)
            text = text[: config.max_chars]
            unit = f"bfcl:{item.get('id')}"
            out.append(_row(text, "tool_schema_negative", f"bfcl:{path.stem}", _split_of(seed, unit), unit, None))
    return out


# ---------------------------------------------------------------------------------------------
# planted: sensitive training texts inside benign context


def planted(sens_rows: Sequence[Mapping[str, Any]], contexts: Sequence[Mapping[str, Any]], seed: int,
            config: BenignConfig) -> list[dict[str, Any]]:
    """Training pii/credential texts inserted at a random position of a training benign context.

    Labels are unchanged (the sensitive text is there); task and tier are null (the request around
    it is someone else's). Only training rows are used on both sides."""
    # contexts of the kinds planted since v8 (named and curated BFCL rows are left out, so the
    # planted rows of earlier builds are unchanged)
    ctx = [c["text"] for c in contexts if c.get("split") == "train"
           and c.get("source") not in ("named_negative", "bfcl_curated_negative")]
    if not ctx:
        return []
    out: list[dict[str, Any]] = []
    for cls in ("credential", "pii"):
        pool = [r for r in sens_rows if r.get("split") == "train" and r.get("sensitivity") == cls]
        if not pool:
            continue
        rng = _rng(seed, "planted", cls)
        for i in rng.permutation(len(pool))[: config.planted_per_class]:
            r = pool[int(i)]
            context = ctx[int(rng.integers(len(ctx)))]
            budget = max(0, config.planted_max_chars - len(r["text"]) - 2)
            if budget < 60:
                continue  # the sensitive text alone fills the window: nothing to plant it in
            start = int(rng.integers(0, max(1, len(context) - budget)))
            context = context[start:start + budget]
            cut = int(rng.integers(0, len(context) + 1))
            # cut at a line or word boundary so the planted text reads as its own line or phrase
            nl = context.rfind("\n", 0, cut)
            cut = nl + 1 if nl >= 0 else cut
            text = clean_text(f"{context[:cut]}\n{r['text']}\n{context[cut:]}")
            out.append({**{k: r.get(k) for k in ("source_task", "template_id", "rule_id", "group")},
                        "text": text, "source": f"planted_{r['source']}", "split": "train",
                        "sensitivity": cls, "task": None, "tier": None, "tier_outcome": None, "output_tokens": None})
    return out


def generate_benign(root: Path, rejects: RejectLog, *, seed: int, config: BenignConfig,
                    existing_keys: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(rows for the data set, held-out real-traffic evaluation rows, stats)."""
    if not config.enabled:
        return [], [], {"enabled": False}
    real_train, real_eval = real_prompts(root, rejects, seed, config, existing_keys)
    code = code_prompts(seed, config)
    other = other_language_prompts(seed, config)
    gen = generated_prompts(seed, config)
    tools = tool_schema_prompts(root, seed, config)
    rows = real_train + code + other + gen + tools
    from collections import Counter

    stats = {
        "real_prompts_train": len(real_train), "real_traffic_eval": len(real_eval), "code": len(code),
        "other_languages": len(other), "generated": len(gen), "tool_schemas": len(tools),
        "by_split": dict(Counter(r["split"] for r in rows)),
        "eval_by_source": dict(Counter(r["source"] for r in real_eval)),
    }
    return rows, real_eval, stats
