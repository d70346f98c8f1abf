"""Security round 2 (issue 16): the nine attacks, each refused or detected, with its message.

Bundle integrity (signatures over the manifest, policy versions bound to their content, the
manifest a regular file of the bundle), bounded loading of archives and directories (refused from
sizes and headers, in a child process whose peak RSS is measured, without writing gigabytes), and
the keyed, checkpointed audit log (truncation with ``.head`` removed, ``.head`` rewound, forged
appends), keyed prompt digests, and the server's ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import LiveServer

from classifier.cli import main as cli_main
from classifier.errors import AuditError, BundleError
from classifier.serving import audit as audit_io
from classifier.serving import bundle as bundle_io
from classifier.serving import signing
from classifier.serving.app import create_app
from classifier.serving.audit import AuditLog, load_key, prompt_digest, verify
from classifier.serving.policy import Decision
from classifier.serving.runtime import Router

ROOT = Path(__file__).resolve().parents[1]
PEAK_RSS_LIMIT_MB = 200
GiB = 1 << 30


# -- helpers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    """(private, public) Ed25519 key files, made by ``tierwise keygen``."""
    prefix = tmp_path_factory.mktemp("keys") / "signer"
    assert cli_main(["keygen", str(prefix)]) == 0
    return prefix.with_name("signer.key"), prefix.with_name("signer.pub")


@pytest.fixture()
def signed(tiny_bundle: Path, tmp_path: Path, keys) -> Path:
    """A signed copy of the tiny bundle (signed with ``tierwise sign``)."""
    out = tmp_path / "signed"
    shutil.copytree(tiny_bundle, out)
    assert cli_main(["sign", str(out), "--key", str(keys[0])]) == 0
    return out


def rehash(directory: Path, name: str) -> None:
    """What the attacker does after editing a file: recompute its hash (and size) in manifest.json."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    data = (directory / name).read_bytes()
    manifest["files"][name] = bundle_io.sha256_bytes(data)
    manifest.setdefault("sizes", {})[name] = len(data)
    path.write_text(json.dumps(manifest, indent=2))


def loosen_credential_gate(directory: Path) -> None:
    """credential: block -> allow (as 'restrict' to every trust level), same version and approval."""
    path = directory / "policy.yaml"
    doc = yaml.safe_load(path.read_text())
    trusts = sorted({t["trust"] for t in doc["tiers"]})
    doc["sensitivity"]["credential"] = {"action": "restrict", "allowed_trust": trusts}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def child_load(bundle: Path, tmp_path: Path, *extra: str) -> dict:
    """Run ``tierwise route`` on ``bundle`` in a child process (TMPDIR its own empty folder) and
    return its exit status, stderr, peak RSS (MB: ``VmHWM``, else ``ru_maxrss``) and the bytes
    left in our extraction folders in TMPDIR, and ``written``: the bytes it passed to ``write``
    (``/proc/self/io`` wchar, stdout and stderr included)."""
    tmpdir = tmp_path / "child-tmp"
    tmpdir.mkdir(exist_ok=True)
    script = (
        "import json, resource, sys, io, contextlib\n"
        "from classifier.cli import main\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    rc = main(sys.argv[1:])\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"  # VmHWM: this program's own peak (ru_maxrss can carry the forking parent's over exec)
        "    peak = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
        "except (OSError, IndexError):\n"
        "    pass\n"
        "written = None\n"
        "try:\n"  # bytes this process passed to write(): what it put on disk at most
        "    written = int([l for l in open('/proc/self/io') if l.startswith('wchar')][0].split()[1])\n"
        "except (OSError, IndexError):\n"
        "    pass\n"
        "print(json.dumps({'rc': rc, 'stderr': err.getvalue(), 'peak_mb': peak / 1024, 'written': written}))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, "route", "hello", "--bundle", str(bundle), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["tmp_left"] = sum(f.stat().st_size for f in tmpdir.rglob("tierwise-*/**/*") if f.is_file())
    return out


class Zeros(io.RawIOBase):
    """``n`` zero bytes as a stream: a huge member without a huge buffer."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def archive_with(bundle: Path, out: Path, replace: dict[str, tuple[int, io.RawIOBase | None]],
                 manifest_first: bool = True) -> Path:
    """A ``.tar.gz`` of ``bundle`` with some members replaced by (size, stream); a None stream
    writes the header only (the data never follows: a reader must refuse from the header)."""
    names = sorted(p.name for p in bundle.iterdir())
    names.remove("manifest.json")
    names = ["manifest.json", *names] if manifest_first else [*names, "manifest.json"]
    with tarfile.open(out, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(f"{bundle.name}/{name}")
            if name in replace:
                size, stream = replace[name]
                info.size = size
                if stream is None:
                    tar.fileobj.write(info.tobuf(tarfile.PAX_FORMAT, tar.encoding, tar.errors))
                    return out  # the archive ends after this header
                tar.addfile(info, stream)
            else:
                data = (bundle / name).read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out


# -- signatures -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_signed_bundle_loads_with_its_key_and_says_so(tiny_bundle: Path, signed: Path, keys) -> None:
    with Router.load(signed, trusted_keys=[keys[1]]) as router:
        assert router.trust["signature_verified"] is True
        assert router.trust["key_id"] == signing.load_public_key(keys[1]).id
        assert router.trust["policy"]["bound"] is True and router.trust["warnings"] == []
        assert router.bundle_hash == bundle_io.sha256_file(signed / "manifest.json")
    manifest = json.loads((signed / "manifest.json").read_text())
    version = yaml.safe_load((signed / "policy.yaml").read_text())["version"]
    assert set(manifest["policy_versions"]) == {str(version)}
    # packed, the signature travels along; an archive can also be signed in place
    with Router.load(bundle_io.pack(signed, signed.parent / "packed.tar.gz"), trusted_keys=[keys[1]]) as router:
        assert router.trust["signature_verified"] is True
    shutil.rmtree(signed)
    archive = bundle_io.pack(tiny_bundle, signed.parent / "unsigned.tar.gz")
    assert cli_main(["sign", str(archive), "--key", str(keys[0])]) == 0
    with Router.load(archive, trusted_keys=[keys[1]]) as router:
        assert router.trust["signature_verified"] is True


def test_without_a_key_loading_warns(tiny_bundle: Path) -> None:
    with Router.load(tiny_bundle, trusted_keys=[]) as router:
        assert router.trust["signature_verified"] is False
        assert router.trust["warnings"] == [signing.NO_KEY_WARNING]


def test_unsigned_and_wrongly_signed_bundles_are_refused(tiny_bundle: Path, signed: Path, keys, tmp_path,
                                                         monkeypatch) -> None:
    with pytest.raises(BundleError, match=r"the bundle is unsigned \(manifest.sig is missing\)"):
        Router.load(tiny_bundle, trusted_keys=[keys[1]])
    other = tmp_path / "other"
    signing.generate_keypair(other)
    with pytest.raises(BundleError, match="does not verify with any trusted key"):
        Router.load(signed, trusted_keys=[other.with_name("other.pub")])
    # TIERWISE_TRUSTED_KEYS is what Router.load trusts when no keys are passed
    monkeypatch.setenv(signing.ENV_TRUSTED_KEYS, str(keys[1]))
    with pytest.raises(BundleError, match="unsigned"):
        Router.load(tiny_bundle)
    Router.load(signed).close()


def test_attack_policy_edit_and_rehash_is_refused(signed: Path, keys) -> None:
    """Attack 1: credential block -> allow in policy.yaml, its hash recomputed in the manifest."""
    loosen_credential_gate(signed)
    rehash(signed, "policy.yaml")
    bundle_io.verify_bundle(signed)  # self-consistent again: only the signature can tell
    with pytest.raises(BundleError, match="signature does not verify with any trusted key"):
        Router.load(signed, trusted_keys=[keys[1]])
    (signed / "manifest.sig").unlink()  # and dropping the signature makes it unsigned
    with pytest.raises(BundleError, match="unsigned"):
        Router.load(signed, trusted_keys=[keys[1]])


def test_policy_content_changed_under_an_unchanged_version_is_refused(signed: Path, keys, tmp_path) -> None:
    """The policy's version and approval are bound to its content (``policy_versions``)."""
    edited = tmp_path / "policy.yaml"
    shutil.copy(signed / "policy.yaml", edited)
    loosen_credential_gate(edited.parent)
    version = yaml.safe_load(edited.read_text())["version"]
    # served instead of the bundle's own (--policy): same version, other content
    with pytest.raises(BundleError, match=f"policy version '{version}' .* the policy changed under an "
                                          "unchanged version"):
        Router.load(signed, policy=edited, trusted_keys=[keys[1]])
    # the signer refuses to sign it under the old version, too
    bundle_io.update_bundle_file(signed, "policy.yaml", edited.read_bytes())
    assert not (signed / "manifest.sig").exists()  # the old signature no longer held
    with pytest.raises(BundleError, match="refusing to sign: policy version .* changed under an unchanged version"):
        signing.sign_bundle(signed, keys[0])
    # bumping the version is the way
    doc = yaml.safe_load(edited.read_text())
    doc["version"] = f"{version}-b"
    bundle_io.update_bundle_file(signed, "policy.yaml", yaml.safe_dump(doc))
    signing.sign_bundle(signed, keys[0])
    with Router.load(signed, trusted_keys=[keys[1]]) as router:
        assert router.policy.version == f"{version}-b"
        assert router.trust["policy"]["version"] == f"{version}-b"


def test_attack_input_limits_edit_is_refused(signed: Path, keys) -> None:
    """Attack 2: input_limits.max_length 128 -> 3 in manifest.json (no file hash to recompute)."""
    before = bundle_io.sha256_file(signed / "manifest.json")
    path = signed / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["input_limits"]["max_length"] = 3
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match="signature does not verify with any trusted key"):
        Router.load(signed, trusted_keys=[keys[1]])
    # pinning the digest catches it without any key
    with pytest.raises(BundleError, match=f"not the pinned {before}"):
        Router.load(signed, trusted_keys=[], expect_sha256=before)


def test_attack_manifest_symlink_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """Attack 3: manifest.json a symlink to a (valid) manifest outside the bundle."""
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    outside = tmp_path / "elsewhere.json"
    shutil.move(b / "manifest.json", outside)
    (b / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        Router.load(b, trusted_keys=[])
    # a symlink to a file inside the bundle is refused too
    inside = b / "manifest.json"
    inside.unlink()
    shutil.copy(outside, b / "copy.json")
    inside.symlink_to("copy.json")
    with pytest.raises(BundleError, match="is a symlink"):
        bundle_io.verify_bundle(b)


@pytest.mark.slow
def test_attack_manifest_hard_link_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """Attack 4: manifest.json a hard link to a file outside the bundle."""
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    outside = tmp_path / "elsewhere.json"
    shutil.move(b / "manifest.json", outside)
    os.link(outside, b / "manifest.json")
    with pytest.raises(BundleError, match="is a hard link"):
        Router.load(b, trusted_keys=[])
    assert child_load(b, tmp_path)["rc"] == 2


# -- bounded loading ------------------------------------------------------------------------------
@pytest.mark.slow  # child process
def test_attack_sparse_40gb_member_is_refused_with_little_memory(tiny_bundle: Path, tmp_path: Path) -> None:
    """Attack 5: a small .tar.gz holding a sparse 40 GB model.onnx (GNU tar --sparse)."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is needed to write a sparse member")
    b = tmp_path / "src" / "tiny"
    shutil.copytree(tiny_bundle, b)
    with open(b / "model.onnx", "r+b") as fh:
        fh.truncate(40 * GiB)  # a hole: nothing is written to disk
    archive = tmp_path / "sparse.tar.gz"
    subprocess.run(["tar", "-czSf", str(archive), "-C", str(b.parent), "tiny"], check=True, timeout=120)
    assert archive.stat().st_size < 5 * 1024 * 1024
    result = child_load(archive, tmp_path)
    assert result["rc"] == 2, result
    assert "model.onnx" in result["stderr"] and "sparse file" in result["stderr"], result["stderr"]
    assert result["peak_mb"] < PEAK_RSS_LIMIT_MB, result
    assert result["tmp_left"] == 0
    assert result["written"] is None or result["written"] < 1024 * 1024, result
    print(f"sparse 40 GB member: refused, peak RSS {result['peak_mb']:.0f} MB")


@pytest.mark.slow  # child process
def test_sparse_40gb_file_in_a_directory_is_refused_from_its_size(tiny_bundle: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    with open(b / "model.onnx", "r+b") as fh:
        fh.truncate(40 * GiB)
    result = child_load(b, tmp_path)
    assert result["rc"] == 2
    assert "is 42949672960 bytes, over the limit" in result["stderr"], result["stderr"]
    assert result["peak_mb"] < PEAK_RSS_LIMIT_MB, result


@pytest.mark.slow  # child process
def test_attack_40gb_header_without_data_is_refused_from_the_header(tiny_bundle: Path, tmp_path: Path) -> None:
    """A crafted header claiming 40 GB: refused before a byte of data is read."""
    archive = archive_with(tiny_bundle, tmp_path / "huge.tar.gz", {"model.onnx": (40 * GiB, None)})
    result = child_load(archive, tmp_path)
    assert result["rc"] == 2
    assert "file 'model.onnx' is 42949672960 bytes, over the limit" in result["stderr"], result["stderr"]
    assert result["peak_mb"] < PEAK_RSS_LIMIT_MB, result


@pytest.mark.slow  # child process per case, 1 GiB gzipped
@pytest.mark.parametrize("manifest_first", [True, False])
def test_attack_1gib_zero_member_is_refused_before_extraction(tiny_bundle: Path, tmp_path: Path,
                                                              manifest_first: bool) -> None:
    """Attack 6: a 1 GiB file of zeros (a ~1 MB archive): refused from its header, never written."""
    archive = archive_with(tiny_bundle, tmp_path / "zeros.tar.gz", {"model.onnx": (GiB, Zeros(GiB))},
                           manifest_first=manifest_first)
    assert archive.stat().st_size < 30 * 1024 * 1024
    result = child_load(archive, tmp_path)
    assert result["rc"] == 2
    assert "file 'model.onnx' is 1073741824 bytes, over the limit of" in result["stderr"], result["stderr"]
    assert result["peak_mb"] < PEAK_RSS_LIMIT_MB, result
    assert result["tmp_left"] == 0
    assert result["written"] is None or result["written"] < 1024 * 1024, result  # nothing extracted
    print(f"1 GiB zero member (manifest first: {manifest_first}): refused, peak RSS {result['peak_mb']:.0f} MB")


def test_member_of_another_size_than_the_manifest_records_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    size = 10 * 1024 * 1024
    archive = archive_with(tiny_bundle, tmp_path / "ten.tar.gz", {"model.onnx": (size, Zeros(size))})
    want = json.loads((tiny_bundle / "manifest.json").read_text())["sizes"]["model.onnx"]
    with pytest.raises(BundleError, match=f"is {size} bytes, the manifest records {want}"):
        Router.load(archive, trusted_keys=[])


def test_archive_caps_members_links_and_duplicates(tiny_bundle: Path, tmp_path: Path) -> None:
    def build(name: str, members: list[tarfile.TarInfo]) -> Path:
        out = tmp_path / name
        with tarfile.open(out, "w:gz") as tar:
            for info in members:
                tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
        return out

    def reg(name: str, size: int = 1) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        return info

    many = build("many.tar.gz", [reg(f"b/f{i}") for i in range(100)])
    with pytest.raises(BundleError, match="more than 64 members"):
        bundle_io.unpack(many, tmp_path / "x1")
    fifo = tarfile.TarInfo("b/model.onnx")
    fifo.type = tarfile.FIFOTYPE
    with pytest.raises(BundleError, match="link or special file"):
        bundle_io.unpack(build("fifo.tar.gz", [fifo]), tmp_path / "x2")
    twice = build("twice.tar.gz", [reg("b/model.onnx"), reg("b/model.onnx")])
    with pytest.raises(BundleError, match="appears twice"):
        bundle_io.unpack(twice, tmp_path / "x3")
    pax = tmp_path / "pax.tar"
    info = tarfile.TarInfo("b/" + "a" * 200)
    info.pax_headers = {"comment": "x" * (200 * 1024)}
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BundleError, match="header of .* bytes .* over the limit"):
        bundle_io.unpack(pax, tmp_path / "x4")


def test_packed_bundles_still_load(tiny_bundle: Path, tmp_path: Path, keys) -> None:
    archive = bundle_io.pack(tiny_bundle, tmp_path / "tiny.tar.gz")
    with Router.load(archive, trusted_keys=[]) as router:
        assert router.route("hello").tier is not None


# -- the audit log --------------------------------------------------------------------------------
def decision(i: int) -> Decision:
    return Decision(tier="cheap", model="m", rule="tier_threshold", reason=f"r{i}",
                    probabilities={"tier": {"cheap": 0.9, "frontier": 0.1}}, thresholds={}, policy_version="v1",
                    flags=[])


@pytest.fixture()
def keyed_log(tmp_path: Path):
    """A keyed log of 12 entries with checkpoints every 5 (and one at close), key and
    checkpoints outside the log's folder; returns (log path, key, checkpoints path, head after 8)."""
    key_file = audit_io.generate_key(tmp_path / "secrets" / "audit.key")
    key = load_key(key_file)
    path = tmp_path / "logs" / "audit.jsonl"
    cps = tmp_path / "anchor" / "checkpoints.jsonl"
    log = AuditLog(path, key=key, prompt_key=load_key(audit_io.generate_key(tmp_path / "secrets" / "prompt.key")),
                   checkpoints=cps, checkpoint_every=5, checkpoint_seconds=None)
    head_after_8 = None
    for i in range(12):
        log.append(decision(i), request_id=f"r{i}", prompt=f"prompt {i}")
        if i == 7:
            head_after_8 = log.head_path.read_bytes()
    log.close()
    assert [json.loads(x)["entries"] for x in cps.read_text().splitlines()] == [5, 10, 12]
    result = verify(path, key=key, checkpoints=cps)
    assert result.ok and result.entries == 12 and result.checkpoints == 3, result
    return path, key, cps, head_after_8


def keep_lines(path: Path, n: int) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:n]))


def test_attack_tail_truncation_with_head_removed_is_detected(keyed_log) -> None:
    """Attack 7: the last 4 lines and audit.jsonl.head deleted."""
    path, key, cps, _ = keyed_log
    keep_lines(path, 8)
    path.with_name(path.name + ".head").unlink()
    with pytest.raises(AuditError, match="the log is keyed .* verify it with --key"):
        verify(path)
    result = verify(path, key=key, checkpoints=cps)
    assert not result.ok and result.kind == "truncated" and result.line == 9
    assert "lines 9..12 were cut off the end: checkpoint 3 records 12 entries" in result.error


def test_attack_head_rewound_is_detected(keyed_log) -> None:
    """Attack 8: the log cut back to entry 8 and .head replaced by its (validly keyed) copy from then."""
    path, key, cps, head_after_8 = keyed_log
    keep_lines(path, 8)
    path.with_name(path.name + ".head").write_bytes(head_after_8)
    assert verify(path, key=key).ok  # the chain and the replayed head agree: only the anchor can tell
    result = verify(path, key=key, checkpoints=cps)
    assert not result.ok and result.kind == "truncated"
    assert "cut off the end" in result.error and "records 12 entries" in result.error


def test_attack_forged_append_is_detected(keyed_log) -> None:
    """Attack 9: a forged line appended, its hash recomputed (SHA-256, and head updated)."""
    path, key, cps, _ = keyed_log
    last = json.loads(path.read_bytes().splitlines()[-1])
    forged = {**last, "seq": 13, "prev_hash": last["hash"], "request_id": "forged",
              "decision": {"tier": "cheap", "model": "m", "blocked": False}}
    forged["hash"] = audit_io.entry_hash(forged)  # without the key, the best a forger can do
    with path.open("a", encoding="utf-8") as fh:
        fh.write(audit_io.canonical_json(forged) + "\n")
    path.with_name(path.name + ".head").write_text(json.dumps({"entries": 13, "hash": forged["hash"]}))
    result = verify(path, key=key, checkpoints=cps, check_head_file=False)
    assert not result.ok and result.line == 13 and result.kind == "forged"
    assert "HMAC does not verify with the audit key" in result.error and "appended at the end" in result.error
    # the head file the forger rewrote does not verify either
    result = verify(path, key=key, checkpoints=cps)
    assert not result.ok and "head file audit.jsonl.head does not verify" in result.error


def test_keyed_log_edits_deletes_and_reorders_are_named(keyed_log, capsys) -> None:
    path, key, cps, _ = keyed_log
    ls = path.read_bytes().splitlines(keepends=True)
    cases = {
        "edited": [*ls[:3], ls[3].replace(b'"cheap"', b'"frontier"', 1), *ls[4:]],
        "deleted": ls[:3] + ls[4:],
        "reordered": [*ls[:3], ls[4], ls[3], *ls[5:]],
        "inserted": ls[:4] + [ls[1]] + ls[4:],
    }
    for kind, content in cases.items():
        path.write_bytes(b"".join(content))
        result = verify(path, key=key, checkpoints=cps)
        assert not result.ok and result.kind == kind, (kind, result)
    # the CLI says which
    key_file = path.parents[1] / "secrets" / "audit.key"
    assert cli_main(["audit", "verify", str(path), "--key", str(key_file), "--checkpoints", str(cps), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["kind"] == "inserted"
    path.write_bytes(b"".join(ls))
    assert cli_main(["audit", "verify", str(path), "--key", str(key_file), "--checkpoints", str(cps)]) == 0
    assert "OK: 12 entries, chain intact, 3 checkpoints match" in capsys.readouterr().out


def test_keyed_prompt_digests_cannot_be_confirmed_without_the_key(keyed_log, tmp_path) -> None:
    path, _, _, _ = keyed_log
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    guess = "prompt 3"
    assert all("prompt_sha256" not in e for e in entries)
    assert audit_io.prompt_sha256(guess) not in path.read_text()
    prompt_key = load_key(tmp_path / "secrets" / "prompt.key")
    assert entries[3]["prompt_hmac"] == prompt_digest(guess, prompt_key)
    assert entries[3]["prompt_key_id"] == audit_io.key_id(prompt_key)


def test_audit_keys_and_checkpoints_must_live_outside_the_log_directory(tmp_path: Path) -> None:
    from classifier.errors import ConfigError

    key_file = audit_io.generate_key(tmp_path / "logs" / "audit.key")
    with pytest.raises(ConfigError, match="inside the audit log's directory"):
        load_key(key_file, log_path=tmp_path / "logs" / "audit.jsonl")
    with pytest.raises(ConfigError, match="checkpoint sink .* is in the audit log's directory"):
        AuditLog(tmp_path / "logs" / "audit.jsonl", key=b"k" * 32, checkpoints=tmp_path / "logs" / "cp.jsonl")


# -- the server -----------------------------------------------------------------------------------
@pytest.mark.slow  # live server
def test_server_publishes_trust_and_checkpoints(signed: Path, keys, tmp_path: Path) -> None:
    key = load_key(audit_io.generate_key(tmp_path / "secrets" / "audit.key"))
    log = tmp_path / "logs" / "audit.jsonl"
    cps = tmp_path / "anchor" / "cp.jsonl"
    app = create_app(signed, audit_log=log, trusted_keys=[keys[1]], audit_key=key, prompt_key=key[::-1],
                     audit_checkpoints=cps, checkpoint_every=3,
                     # the timer must not add a checkpoint while the test runs (a loaded machine took > 30 s)
                     checkpoint_seconds=3600)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        ready = client.get("/readyz").json()
        assert ready["trust"]["signature_verified"] is True and ready["warnings"] == []
        for i in range(4):
            assert client.post("/v1/route", json={"text": f"hello {i}"}).status_code == 200
        metrics = client.get("/metrics").text
        head = json.loads(cps.read_text().splitlines()[-1])["head"]
        assert "tierwise_audit_checkpoint_entries 3.0" in metrics
        assert f'tierwise_audit_checkpoint_info{{head="{head}",seq="1"}} 3.0' in metrics
        assert "tierwise_audit_entries 4.0" in metrics
    # shutting down wrote a final checkpoint at entry 4
    assert json.loads(cps.read_text().splitlines()[-1])["entries"] == 4
    assert verify(log, key=key, checkpoints=cps).ok


@pytest.mark.slow  # live server
def test_server_without_keys_warns_in_readyz(tiny_bundle: Path, tmp_path: Path) -> None:
    app = create_app(tiny_bundle, audit_log=tmp_path / "audit.jsonl", trusted_keys=[])
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        warnings = client.get("/readyz").json()["warnings"]
    assert signing.NO_KEY_WARNING in warnings
    assert any("not keyed" in w for w in warnings) and any("unsalted" in w for w in warnings)


@pytest.mark.slow  # CLI subprocess
def test_serve_with_trusted_key_refuses_an_unsigned_bundle(tiny_bundle: Path, keys) -> None:
    proc = subprocess.run([sys.executable, "-m", "classifier.cli", "serve", str(tiny_bundle), "--port", "1",
                           "--trusted-key", str(keys[1])], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "refusing to serve" in proc.stderr and "unsigned" in proc.stderr
