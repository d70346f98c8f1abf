"""Audit log: a hash chain that names the first edited, removed, reordered, inserted or cut line."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from classifier.cli import main as cli_main
from classifier.errors import AuditError
from classifier.serving.audit import GENESIS, AuditLog, entry_hash, verify
from classifier.serving.policy import Decision


def decision(i: int = 0, tier: str = "cheap") -> Decision:
    return Decision(
        tier=tier, model=f"model-{tier}", rule="tier_threshold", reason=f"p(frontier)=0.{i} < 0.5",
        probabilities={"tier": {"cheap": 1 - i / 100, "frontier": i / 100}},
        thresholds={"tier": {"frontier": 0.5}}, policy_version="v1", flags=["truncated"] if i % 2 else [],
    )


def write_log(path: Path, n: int = 5, **kwargs) -> AuditLog:
    log = AuditLog(path, **kwargs)
    for i in range(n):
        log.append(decision(i), request_id=f"req-{i}", prompt=f"secret prompt {i}", model_version="m1",
                   bundle_hash="b" * 64, latency_ms=1.5)
    return log


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_entries_hold_the_record_and_chain(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    write_log(path, 3)
    entries = [json.loads(x) for x in lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS
    for prev, cur in zip(entries, entries[1:], strict=False):
        assert cur["prev_hash"] == prev["hash"]
    e = entries[1]
    assert e["hash"] == entry_hash(e)
    assert e["prompt_sha256"] == hashlib.sha256(b"secret prompt 1").hexdigest()
    assert "prompt" not in e and "secret prompt" not in path.read_text()
    assert e["request_id"] == "req-1" and e["time"].endswith("Z")
    assert (e["model_version"], e["bundle_hash"], e["policy_version"], e["rule"]) == ("m1", "b" * 64, "v1", "tier_threshold")
    assert e["decision"] == {"tier": "cheap", "model": "model-cheap", "blocked": False}
    assert e["probabilities"]["tier"]["frontier"] == pytest.approx(0.01)
    assert e["thresholds"] == {"tier": {"frontier": 0.5}} and e["flags"] == ["truncated"]
    assert e["extra"] == {"latency_ms": 1.5}
    result = verify(path)
    assert result.ok and result.entries == 3 and result.last_hash == entries[-1]["hash"]


def test_store_text_keeps_the_prompt(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 1, store_text=True)
    assert json.loads(lines(path)[0])["prompt"] == "secret prompt 0"
    assert verify(path).ok


def test_decision_dicts_and_non_finite_numbers_are_accepted(tmp_path):
    path = tmp_path / "audit.jsonl"
    d = decision(1).to_dict()
    d["probabilities"] = {"tier": {"cheap": float("nan"), "frontier": 0.5}}
    AuditLog(path).append(d, request_id="r", prompt=b"bytes prompt")
    assert json.loads(lines(path)[0])["probabilities"]["tier"]["cheap"] is None
    assert verify(path).ok


def _edit(ls: list[str]) -> list[str]:
    e = json.loads(ls[2])
    e["decision"]["tier"] = "frontier"
    ls[2] = json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
    return ls


def _edit_and_rehash(ls: list[str]) -> list[str]:
    # a careful forger recomputes the entry's own hash: the next line's prev_hash still breaks
    e = json.loads(ls[2])
    e["decision"]["tier"] = "frontier"
    e["hash"] = entry_hash(e)
    ls[2] = json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
    return ls


TAMPERING = {
    "edit": (_edit, 3, "edited", "edited"),
    "edit_and_rehash": (_edit_and_rehash, 4, "previous line was edited and re-hashed", "edited"),
    "delete_middle": (lambda ls: ls[:2] + ls[3:], 3, "entries 3..3 are missing", "deleted"),
    "delete_first": (lambda ls: ls[1:], 1, "entries 1..1 are missing", "deleted"),
    "reorder": (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, "lines were reordered", "reordered"),
    "insert_copy": (lambda ls: ls[:3] + [ls[1]] + ls[3:], 4, "a copy was inserted", "inserted"),
    "truncate_mid_line": (lambda ls: ls[:4] + [ls[4][:40]], 5, "truncated mid-entry", "truncated"),
    "truncate_last_line": (lambda ls: ls[:4], 5, "cut off the end", "truncated"),
    "garbage_line": (lambda ls: ls[:1] + ["not json\n"] + ls[1:], 2, "not valid JSON", "damaged"),
    # the parsed object is unchanged (json keeps the last value): only the raw bytes show the edit
    "duplicate_key": (lambda ls: ls[:2] + [ls[2].replace(',"decision":', ',"rule":"x","decision":', 1)] + ls[3:],
                      3, "duplicate key 'rule'", "edited"),
    "whitespace": (lambda ls: ls[:2] + [ls[2].replace('":', '": ', 1)] + ls[3:], 3, "not the canonical JSON",
                   "edited"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_detected_and_the_line_named(tmp_path, kind):
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    assert verify(path).ok
    change, line, message, what = TAMPERING[kind]
    path.write_text("".join(change(lines(path))), encoding="utf-8")
    result = verify(path)
    assert not result.ok
    assert result.line == line, result
    assert message in result.error
    assert result.kind == what
    assert f"line {line}" in result.message(path)


def test_tail_truncation_without_head_file_needs_an_anchor(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    anchor = verify(path).last_hash
    path.write_text("".join(lines(path)[:3]), encoding="utf-8")
    path.with_name(path.name + ".head").unlink()
    assert verify(path).ok  # a bare chain cannot see a cut tail
    result = verify(path, expected_head=anchor)
    assert not result.ok and result.line == 4 and "expected head" in result.error


def test_appending_to_a_broken_log_refuses(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    with path.open("a") as fh:
        fh.write('{"half": ')
    with pytest.raises(AuditError, match="last line is not a valid audit entry"):
        AuditLog(path).append(decision(), request_id="r", prompt="p")


def test_concurrent_thread_appends_keep_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    def worker(k: int) -> None:
        for i in range(25):
            log.append(decision(i), request_id=f"t{k}-{i}", prompt="x")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify(path)
    assert result.ok and result.entries == 100


def _process_worker(path: str, k: int) -> None:
    log = AuditLog(path)
    for i in range(20):
        log.append(decision(i), request_id=f"p{k}-{i}", prompt="x")


def test_concurrent_process_appends_keep_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_worker, args=(str(path), k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    result = verify(path)
    assert result.ok and result.entries == 60
    ids = {json.loads(x)["request_id"] for x in lines(path)}
    assert len(ids) == 60


def test_cli_audit_verify(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    assert cli_main(["audit", "verify", str(path)]) == 0
    assert "OK: 3 entries" in capsys.readouterr().out
    ls = lines(path)
    path.write_text("".join([ls[0], ls[2], ls[1]]), encoding="utf-8")
    assert cli_main(["audit", "verify", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["line"] == 2
    assert cli_main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
