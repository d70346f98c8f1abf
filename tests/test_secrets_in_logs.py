"""Secrets and personal data never reach logs or audit files (issue 7).

Prompts holding credentials (AWS key id, GitHub token, PEM private key) and PII (email, phone,
SSN) are sent to a real ``tierwise serve`` (with ``--audit-log``, at debug log level), to one
whose every decision is a deadline fallback (the fault path logs), through invalid and
oversized requests, and through ``tierwise route`` (single prompt and JSONL file). Then the
server's stdout/stderr, the CLI's output, every audit file and the MLflow artifacts of a tiny
export are searched for the secrets. The audit log must still have recorded each prompt (by its
SHA-256), and storing text is possible only when asked for (``AuditLog(store_text=True)``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from test_faults import misnamed_session

from benchmarks.loadtest import ServeProcess
from classifier.serving.audit import AuditLog, verify
from classifier.serving.runtime import Router

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAtierwiseFAKEkeyMATERIALforTESTSonly0123456789abcdefgh\n"
    "xq9TierwiseSecondLineOfFakeKeyMaterial/+AbCdEfGhIjKlMnOpQrStUvWxYz012\n"
    "-----END RSA PRIVATE KEY-----"
)
SECRET_PROMPTS = [
    "my aws key is AKIAZ7TIERWISETEST42 please check the bucket policy",
    "deploy with token ghp_tierwiseFakeToken0123456789abcdEFGHij and push",
    f"why does ssh reject this key?\n{PEM}\nit used to work",
    "email jane.tierwise.doe@example.org about the refund",
    "call me on +1 (415) 555-0142 after six",
    "my social security number is 078-05-1120, fill in the form",
]
# distinctive pieces: any of them in a log means a prompt leaked (escaping does not hide them)
NEEDLES = [
    "AKIAZ7TIERWISETEST42", "ghp_tierwiseFakeToken0123456789abcdEFGHij", "tierwiseFAKEkeyMATERIAL",
    "TierwiseSecondLineOfFakeKeyMaterial", "jane.tierwise.doe", "555-0142", "078-05-1120",
]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def leaks(*texts: str) -> list[str]:
    found = []
    for text in texts:
        found += [n for n in NEEDLES if n in text]
        found += [n for n in NEEDLES if json.dumps(n)[1:-1] in text]
    return sorted(set(found))


def read_all(folder: Path) -> str:
    """Every file under ``folder`` as text (binary files too, decoded leniently)."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file())


def send_everything(url: str) -> None:
    """The secret prompts through every kind of request: good, invalid, malformed, oversized."""
    with httpx.Client(base_url=url, timeout=30) as c:
        for i, prompt in enumerate(SECRET_PROMPTS):
            assert c.post("/v1/route", json={"text": prompt, "request_id": f"secret-{i}"}).status_code == 200
        assert c.post("/v1/route", json={"texts": SECRET_PROMPTS, "request_id": "secret-batch"}).status_code == 200
        bad_requests = [
            json.dumps({"text": SECRET_PROMPTS[0], "unexpected": 1}).encode(),
            json.dumps({"texts": [SECRET_PROMPTS[1], 5]}).encode(),
            json.dumps({"text": SECRET_PROMPTS[2], "request_id": "not a valid id"}).encode(),
            json.dumps({"text": SECRET_PROMPTS[3]}).encode()[:-3],  # cut JSON
            ('{"text": "' + SECRET_PROMPTS[4]).encode() + b'\xff\xfe"}',  # invalid UTF-8 inside
            json.dumps({"text": SECRET_PROMPTS[5] * 40_000}).encode(),  # over the body limit
            json.dumps({"texts": SECRET_PROMPTS * 100}).encode(),  # over the batch limit
        ]
        for raw in bad_requests:
            resp = c.post("/v1/route", content=raw, headers={"content-type": "application/json"})
            assert resp.status_code in (200, 400, 413), resp.text
        assert c.get("/ghp_tierwiseFakeToken0123456789abcdEFGHij?key=AKIAZ7TIERWISETEST42").status_code == 404


@pytest.mark.slow
def test_server_logs_and_audit_log_hold_no_prompt_text(tiny_bundle: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit" / "audit.jsonl"
    with ServeProcess(tiny_bundle, "--audit-log", str(audit), "--log-level", "debug", "--max-batch", "16",
                      log_dir=tmp_path / "logs") as srv:
        assert srv.wait_for("/readyz", 200), srv.logs()
        send_everything(srv.url)
    logs = srv.logs()
    assert "Uvicorn running" in logs or "Application startup complete" in logs  # the capture works
    audit_text = read_all(audit.parent)
    assert leaks(logs, audit_text) == []
    # every prompt was audited, by hash
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    hashes = {e["prompt_sha256"] for e in entries}
    assert {sha(p) for p in SECRET_PROMPTS} <= hashes
    assert all("prompt" not in e for e in entries)
    assert verify(audit).ok


@pytest.mark.slow
def test_fault_path_logs_hold_no_prompt_text(tiny_bundle: Path, tmp_path: Path) -> None:
    # a deadline no run can meet: every decision is a logged fallback
    with ServeProcess(tiny_bundle, "--deadline-ms", "0.001", "--log-level", "debug", log_dir=tmp_path) as srv:
        assert srv.wait_for("/readyz", 200), srv.logs()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            body = c.post("/v1/route", json={"texts": SECRET_PROMPTS}).json()
        assert all("fallback" in d["flags"] for d in body["decisions"])
    logs = srv.logs()
    assert "deadline of 0.001 ms exceeded" in logs  # the fault was logged ...
    assert leaks(logs) == []  # ... without the prompts


def test_inference_fault_logs_hold_no_prompt_text(tiny_bundle: Path, caplog) -> None:
    with Router.load(tiny_bundle) as router:
        router._session = misnamed_session(tiny_bundle)  # run raises: logged with its traceback
        with caplog.at_level(logging.DEBUG):
            decisions = router.route(SECRET_PROMPTS)
    assert all("fallback" in d.flags for d in decisions)
    assert "inference failed" in caplog.text and "Traceback" in caplog.text
    assert leaks(caplog.text, *(json.dumps(d.to_dict()) for d in decisions)) == []


@pytest.mark.slow
def test_route_cli_output_and_audit_hold_no_prompt_text(tiny_bundle: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "classifier.cli", "route"]
    single = subprocess.run([*cli, SECRET_PROMPTS[2], "--bundle", str(tiny_bundle), "--audit-log", str(audit)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert single.returncode == 0, single.stderr
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"r{i}", "text": p}) for i, p in enumerate(SECRET_PROMPTS)]
    lines += ['{"id": "cut", "text": "' + SECRET_PROMPTS[0], json.dumps({"id": "wrong", "prompt": SECRET_PROMPTS[1]}),
              json.dumps({"id": "num", "text": 5})]
    src.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "' + SECRET_PROMPTS[4].encode() + b'\xff"}\n')
    out = tmp_path / "out.jsonl"
    batch = subprocess.run([*cli, "--bundle", str(tiny_bundle), "--input", str(src), "--output", str(out),
                            "--audit-log", str(audit)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert batch.returncode == 0, batch.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(lines) + 1
    assert leaks(single.stdout, single.stderr, batch.stdout, batch.stderr, out.read_text(),
                 audit.read_text(), audit.with_name(audit.name + ".head").read_text()) == []
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {sha(p) for p in SECRET_PROMPTS} <= {e["prompt_sha256"] for e in entries}
    assert verify(audit).ok


def test_audit_stores_text_only_when_configured(tiny_bundle: Path, tmp_path: Path) -> None:
    """The searches above would find a stored prompt: ``store_text=True`` is the only way in."""
    with Router.load(tiny_bundle) as router:
        decision = router.route(SECRET_PROMPTS[0])
        quiet = AuditLog(tmp_path / "hashed.jsonl")
        quiet.append(decision, request_id="a", prompt=SECRET_PROMPTS[0])
        loud = AuditLog(tmp_path / "text.jsonl", store_text=True)
        loud.append(decision, request_id="b", prompt=SECRET_PROMPTS[0])
    assert leaks((tmp_path / "hashed.jsonl").read_text()) == []
    assert leaks((tmp_path / "text.jsonl").read_text()) == ["AKIAZ7TIERWISETEST42"]


@pytest.mark.slow
def test_mlflow_artifacts_of_an_export_hold_no_prompt_text(tiny_model_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An export given the secret prompts as parity prompts logs its bundle to an MLflow run:
    neither the store nor the artifacts may hold them."""
    from classifier import tracking
    from classifier.training.export import ExportConfig, export_model

    store = tmp_path / "mlruns"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = tracking.client(uri)
    experiment = client.create_experiment("secrets", artifact_location=str(store / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    info = json.loads((model_dir / "model_info.json").read_text())
    info["training_run_id"] = run_id
    (model_dir / "model_info.json").write_text(json.dumps(info))
    result = export_model(ExportConfig(
        model_dir=model_dir, out_dir=tmp_path / "bundle", policy=ROOT / "serving" / "policy.example.yaml",
        dataset=None, extra_prompts=tuple(SECRET_PROMPTS), log_to_mlflow=True, pack=False,
    ))
    assert result.mlflow_logged
    artifacts = read_all(store / "artifacts")
    assert "tierwise-bundle" in artifacts  # the bundle's manifest was logged
    assert result.parity["fp32"]["prompts"] >= len(SECRET_PROMPTS)  # the secrets were used for parity
    assert leaks(artifacts, read_all(tmp_path / "bundle"), (store / "mlflow.db").read_bytes().decode("latin-1")) == []
