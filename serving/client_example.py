#!/usr/bin/env python3
"""Example client of the tierwise routing service, standard library only (urllib).

Start a server first::

    tierwise serve bundles/teacher --port 8000

then::

    python serving/client_example.py "Write a haiku about the sea"
    python serving/client_example.py --url http://127.0.0.1:8000 "first prompt" "second prompt"

One prompt is sent as {"text": ...}, several as one batch {"texts": [...]}. The script prints
each decision's tier, model, rule and flags, and exits 1 with the server's JSON error message
when the server refuses the request (4xx) or cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
import uuid


def route(url: str, texts: list[str], timeout: float = 5.0) -> dict:
    """POST /v1/route and return the parsed answer; raises RuntimeError with the server's error."""
    body = {"text": texts[0]} if len(texts) == 1 else {"texts": texts}
    body["request_id"] = uuid.uuid4().hex
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/route",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        # the server answers errors as {"error": {"type", "message"}}
        try:
            error = json.loads(exc.read().decode("utf-8"))["error"]
            raise RuntimeError(f"HTTP {exc.code} {error['type']}: {error['message']}") from None
        except (ValueError, KeyError):
            raise RuntimeError(f"HTTP {exc.code}: {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise RuntimeError(f"cannot reach {url}: {exc.reason}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("texts", nargs="+", help="prompt(s) to route")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--json", action="store_true", help="print the full JSON answer")
    args = parser.parse_args()
    try:
        answer = route(args.url, args.texts)
    except RuntimeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(answer, indent=2, ensure_ascii=False) + "\n")
        return 0
    decisions = [answer["decision"]] if "decision" in answer else answer["decisions"]
    for text, d in zip(args.texts, decisions, strict=True):
        target = "BLOCKED" if d["blocked"] else f"{d['tier']} ({d['model']})"
        flags = f" [{', '.join(d['flags'])}]" if d["flags"] else ""
        sys.stdout.write(f"{text[:50]!r} -> {target} by {d['rule']}{flags}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
