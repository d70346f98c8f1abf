"""Real user prompts from the shared data, for measuring false flags of the detectors.

``load_real_prompts(root)`` reads the Chatbot Arena prompts (arena-hard v0.1 and v2.0), the
RouterArena prompts and the user turns of the BFCL live requests, deduplicated on exact text,
as ``(source, text)`` pairs. They are real traffic: most hold no credential or personal data,
some do (read the hits before calling any of them a false flag). Left out: the multi-turn
BFCL sets (simulated), anything that is not a user turn.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_real_prompts(root: str | Path) -> list[tuple[str, str]]:
    root = Path(root)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(source: str, text: object) -> None:
        if isinstance(text, str) and text.strip() and text not in seen:
            seen.add(text)
            out.append((source, text))

    for path in sorted((root / "arena-hard").glob("**/question.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            row = json.loads(line)
            text = row.get("prompt") or row.get("turns", [{}])[0].get("content")
            add(f"arena-hard:{path.parent.name}", text)
    for path in sorted((root / "routerarena" / "cached_results").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                add("routerarena", json.loads(line).get("question"))
    for path in sorted((root / "bfcl").glob("BFCL_v4_live_*.json")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            row = json.loads(line)
            for turn in row.get("question", []):
                for msg in turn if isinstance(turn, list) else [turn]:
                    if isinstance(msg, dict) and msg.get("role") == "user":
                        add("bfcl-live", msg.get("content"))
    return out
