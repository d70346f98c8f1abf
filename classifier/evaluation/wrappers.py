"""Long-prompt evaluation sets: every test prompt wrapped in >= 1,000 tokens of shared prefix,
the request last, as OpenAI chat-completions bodies.

Kinds (one JSONL file each, ``<out>/wrapped_<kind>.jsonl``):

- ``kshot_turns``: k-shot examples from the prompt's own ``source_task`` (other test/validation
  prompts of that task; the same ordered shots for every prompt of the task, so the prefix is
  shared) as prior user/assistant turns;
- ``kshot_flat``: the same shots as one flat user message, the question last;
- ``agent``: an agent system prompt with tool schemas (``tools``) from BFCL's multi-turn tool
  suites (``bfcl/multi_turn_func_doc``; four fixed suite combinations, one per prompt by hash);
- ``history``: prior conversation turns of BFCL multi-turn tasks (``BFCL_v4_multi_turn_base``:
  user turns, assistant tool calls, tool results holding the tasks' initial state), then the prompt.

Only BFCL's multi-turn files are read: the training wrappers come from BFCL's live requests, so
evaluation wrappers are never training wrappers. Shots come from test/validation prompts only.
Where a source task has too few other prompts for 1,000 tokens, shots from the same ``source``
fill up, then from any task. Token counts are pre-tokens (words and punctuation marks), a lower
bound on WordPiece tokens, so ">= 1,000" holds for any BERT-style tokenizer. Assistant turns of
k-shot examples carry a short placeholder: the data set has no reference answers.

A record: ``id, kind, source, source_task, tier, task, sensitivity, request`` (the unwrapped
prompt), ``body`` (the chat body), ``prefix_tokens``. The sets are built from shared data: write
them under ``data/build/eval/`` (git-ignored), never commit them.

What this module leaves out: scoring the sets (``long_prompts.py``) and training-time wrapping.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import DataError

KINDS = ("kshot_turns", "kshot_flat", "agent", "history")
MIN_PREFIX_TOKENS = 1000
SHOT_ANSWER = "(example answer)"
_PRETOKEN = re.compile(r"\w+|[^\w\s]")
AGENT_SYSTEM = (
    "You are an autonomous assistant that completes the user's task by calling the tools listed below. "
    "Think about which tool fits each step, call tools with arguments that match their JSON schema exactly, "
    "never invent tool names or parameters, and ask the user when a required argument is missing. "
    "Report the result of each step briefly. If no tool fits the request, answer it directly and say so."
)


def count_tokens(text: str) -> int:
    """Pre-tokens (words and punctuation marks): a lower bound on BERT WordPiece tokens."""
    return len(_PRETOKEN.findall(text))


def _stable(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)


def bfcl_dir(shared: Path) -> Path:
    path = Path(shared) / "bfcl"
    if not (path / "multi_turn_func_doc").is_dir():
        raise DataError(f"{path}/multi_turn_func_doc not found: set TIERWISE_SHARED_DATA or --shared to the "
                        "shared datasets folder")
    return path


def load_suites(bfcl: Path) -> dict[str, list[dict[str, Any]]]:
    """BFCL multi-turn tool suites as OpenAI ``tools`` lists, by suite name."""
    suites: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((bfcl / "multi_turn_func_doc").glob("*.json")):
        tools = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            fn = json.loads(line)
            params = dict(fn.get("parameters") or {"type": "object", "properties": {}})
            if params.get("type") == "dict":
                params["type"] = "object"  # BFCL writes Python's 'dict'
            tools.append({"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                                           "parameters": params}})
        suites[path.stem] = tools
    if not suites:
        raise DataError(f"no tool suites in {bfcl / 'multi_turn_func_doc'}")
    return suites


def agent_configs(suites: dict[str, list[dict[str, Any]]], n: int = 4) -> list[dict[str, Any]]:
    """``n`` fixed agent set-ups (system prompt + tools of 2+ suites), each >= MIN_PREFIX_TOKENS."""
    names = sorted(suites)
    configs = []
    for k in range(n):
        picked: list[str] = []
        tools: list[dict[str, Any]] = []
        j = k
        while not picked or count_tokens(AGENT_SYSTEM + json.dumps(tools)) < MIN_PREFIX_TOKENS or len(picked) < 2:
            name = names[(j * 5 + k) % len(names)]
            j += 1
            if name in picked:
                if len(picked) == len(names):
                    break
                continue
            picked.append(name)
            tools += suites[name]
        configs.append({"suites": picked, "tools": tools})
    return configs


def load_histories(bfcl: Path) -> list[list[dict[str, Any]]]:
    """Conversations from BFCL multi-turn tasks: user turns, an assistant tool call and a tool
    result with a slice of the task's initial state, per turn."""
    path = bfcl / "BFCL_v4_multi_turn_base.json"
    if not path.is_file():
        raise DataError(f"{path} not found")
    convs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        task = json.loads(line)
        state = json.dumps(task.get("initial_config", {}), ensure_ascii=False)
        msgs: list[dict[str, Any]] = []
        for t, turn in enumerate(task.get("question", [])):
            for m in turn:
                if m.get("role") == "user" and isinstance(m.get("content"), str):
                    msgs.append({"role": "user", "content": m["content"]})
            call_id = f"call_{t}"
            msgs.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_state", "arguments": json.dumps({"step": t})}}]})
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": state[t * 600:(t + 1) * 600] or "ok"})
            msgs.append({"role": "assistant", "content": f"Step {t + 1} is done."})
        if msgs:
            convs.append(msgs)
    return convs


def _history_prefix(convs: list[list[dict[str, Any]]], start: int) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant with tool access."}]
    k = start
    while _text_tokens(msgs) < MIN_PREFIX_TOKENS:
        msgs += convs[k % len(convs)]
        k += 1
    return msgs


def _text_tokens(msgs: list[dict[str, Any]]) -> int:
    """Pre-tokens of what the model receives of ``msgs`` (their text, tool calls included)."""
    from classifier.serving.request import parse_request

    return count_tokens(parse_request({"messages": msgs}).full_text)


def _shots(pool: pd.DataFrame, fallback: Sequence[pd.DataFrame], exclude: str, seed: int) -> list[str]:
    """The ordered shots (texts) for one task: its own prompts, then fallbacks, skipping ``exclude``."""
    shots: list[str] = []
    total = 0
    for frame in (pool, *fallback):
        order = np.random.default_rng(seed).permutation(len(frame))
        for i in order:
            row = frame.iloc[int(i)]
            if row["id"] == exclude or row["text"] in shots:
                continue
            shots.append(row["text"])
            total += count_tokens(row["text"])
            if total >= MIN_PREFIX_TOKENS:
                return shots
    return shots


def build_wrapped(frame: pd.DataFrame, shared: Path, *, kinds: Sequence[str] = KINDS, seed: int = 0,
                  sample: int | None = None, progress: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The wrapped records per kind for the test split of ``frame`` (``sample``: a seeded subset)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise DataError(f"unknown wrapper kind(s) {unknown}; known: {list(KINDS)}")
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise DataError("the data set has no test split")
    if sample is not None and sample < len(test):
        test = test.sample(n=sample, random_state=seed).reset_index(drop=True)
    pool = frame[frame["split"].isin(["test", "validation"])]
    by_task = {k: g for k, g in pool.groupby("source_task")}
    by_source = {k: g for k, g in pool.groupby("source")}
    bfcl = bfcl_dir(shared)
    configs = agent_configs(load_suites(bfcl)) if "agent" in kinds else []
    convs = load_histories(bfcl) if "history" in kinds else []
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    from tqdm import tqdm

    for _, row in tqdm(test.iterrows(), total=len(test), desc="wrapping", disable=not progress):
        request = row["text"]
        base = {"id": row["id"], "source": row["source"], "source_task": row["source_task"],
                "tier": row.get("tier"), "task": row.get("task"), "sensitivity": row.get("sensitivity"),
                "request": request}
        base = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in base.items()}
        if "kshot_turns" in kinds or "kshot_flat" in kinds:
            task = row["source_task"]
            shots = _shots(by_task.get(task, pool.iloc[:0]), [by_source.get(row["source"], pool.iloc[:0]), pool],
                           row["id"], seed + _stable(task) % 1000)
            prefix_tokens = sum(count_tokens(s) for s in shots)
            if "kshot_turns" in kinds:
                msgs: list[dict[str, Any]] = []
                for s in shots:
                    msgs += [{"role": "user", "content": s}, {"role": "assistant", "content": SHOT_ANSWER}]
                msgs.append({"role": "user", "content": request})
                out["kshot_turns"].append({**base, "kind": "kshot_turns", "prefix_tokens": prefix_tokens,
                                           "body": {"model": "gpt-4o-mini", "messages": msgs}})
            if "kshot_flat" in kinds:
                flat = "Here are example questions of the same kind.\n\n" + "\n\n".join(
                    f"Example {k + 1}:\n{s}" for k, s in enumerate(shots)) + "\n\nNow the question to answer:\n\n" + request
                out["kshot_flat"].append({**base, "kind": "kshot_flat", "prefix_tokens": prefix_tokens,
                                          "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": flat}]}})
        if "agent" in kinds:
            cfg = configs[_stable(row["id"]) % len(configs)]
            body = {"model": "gpt-4o", "tools": cfg["tools"], "tool_choice": "auto",
                    "messages": [{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": request}]}
            out["agent"].append({**base, "kind": "agent", "suites": cfg["suites"],
                                 "prefix_tokens": count_tokens(AGENT_SYSTEM + json.dumps(cfg["tools"])), "body": body})
        if "history" in kinds:
            msgs = _history_prefix(convs, _stable(row["id"]) % len(convs))
            out["history"].append({**base, "kind": "history", "prefix_tokens": _text_tokens(msgs),
                                   "body": {"model": "gpt-4o", "messages": [*msgs, {"role": "user", "content": request}]}})
    return out


def write_wrapped(sets: dict[str, list[dict[str, Any]]], out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, records in sets.items():
        path = out_dir / f"wrapped_{kind}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        paths[kind] = path
    return paths


def read_wrapped(path: Path, sample: int | None = None, seed: int = 0,
                 keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:  # not splitlines(): JSON strings may hold U+2028
        records = [json.loads(line) for line in fh if line.strip()]
    if keep is not None:
        records = [r for r in records if keep(r)]
    if sample is not None and sample < len(records):
        idx = sorted(np.random.default_rng(seed).choice(len(records), size=sample, replace=False).tolist())
        records = [records[i] for i in idx]
    return records
