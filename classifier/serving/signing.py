"""Signed bundles: Ed25519 signatures over the manifest, trusted keys, digest pinning, and the
binding of a policy's version to its content.

A bundle's ``manifest.json`` hashes every file (and records its size) and holds every other
bundle field (input limits, library versions, kind, quantization, parent bundle and parity
reports, ...). ``tierwise sign BUNDLE --key KEY`` signs the exact bytes of ``manifest.json``
(prefixed with a domain string, so the signature means nothing in any other context) and writes
``manifest.sig``: so the signature covers every file *and* every manifest field. A router given
trusted public keys (``Router.load(..., trusted_keys=...)``, ``tierwise serve --trusted-key``, or
``TIERWISE_TRUSTED_KEYS``, paths separated by ``os.pathsep``) refuses a bundle that is unsigned
or whose signature does not verify with one of them. ``expect_sha256`` (``--expect-sha256``)
pins the sha256 of ``manifest.json`` (the ``bundle_hash`` in ``/readyz`` and the audit log),
which pins every file as well.

**Policy binding.** When it signs, ``tierwise sign`` records ``policy_versions`` in the manifest:
``{version: {"sha256": <digest of the policy's content>, "ticket": <approval ticket>}}``, for the
bundle's policy plus every version the signer approved before (kept in the manifest across
re-signing, and in an optional ``--ledger`` file the signer keeps next to the key). It refuses to
sign a policy whose version is already recorded with other content. At load, the policy that will
be served (the bundle's own, or one given with ``--policy``) must have its version in
``policy_versions`` with that digest: a policy whose content changed under an unchanged version is
refused. With trusted keys this is a guarantee (the map is signed); without keys it is only a
consistency check (whoever can write the bundle can rewrite the map), and the router says so in
``/readyz``. The content digest is the sha256 of the policy's canonical JSON (sorted keys), so
comments and formatting do not count as changes.

What this module leaves out: key storage (keys are PEM files; keep the private key off the
serving machines), certificate chains and revocation (remove a key from the trusted set), and
signing archives in place without unpacking them (``sign`` unpacks, signs and repacks).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classifier.errors import BundleError, ConfigError
from classifier.serving import bundle as bundle_io

logger = logging.getLogger(__name__)

ENV_TRUSTED_KEYS = "TIERWISE_TRUSTED_KEYS"
SIGNATURE_FORMAT = "tierwise-signature"
ALGORITHM = "ed25519"
# the signed message is DOMAIN + the manifest bytes: a signature over a bundle manifest cannot be
# replayed as a signature over anything else
DOMAIN = b"tierwise-bundle-manifest-v1\n"
NO_KEY_WARNING = ("no trusted signing key is configured: the bundle's integrity is only self-consistency "
                  "(anyone who can write the bundle directory can change it and its manifest); set "
                  f"--trusted-key or {ENV_TRUSTED_KEYS}")

__all__ = ["TrustedKey", "check_bundle_trust", "check_policy_binding", "generate_keypair", "load_trusted_keys",
           "policy_digest", "sign_bundle", "trusted_keys_from_env"]


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - the serve extra installs it
        raise ConfigError("signed bundles need the 'cryptography' package (pip install 'tierwise[serve]')") from None
    return serialization, ed25519


def _raw_public(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Any) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    """One public key a router trusts, with where it came from."""

    key: Any
    id: str
    source: str


def generate_keypair(out_prefix: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``<prefix>.key`` (PKCS#8 PEM, mode 0600; keep it off the
    serving machines) and ``<prefix>.pub`` (the public key routers trust). Refuses to overwrite."""
    serialization, ed25519 = _crypto()
    prefix = Path(out_prefix)
    private_path, public_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; refusing to overwrite a key")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _load_pem(path: Path, private: bool) -> Any:
    """An Ed25519 key from a PEM file; ``ConfigError`` says which file and what is wrong with it."""
    serialization, ed25519 = _crypto()
    what, kind = ("signing", "an unencrypted PEM private") if private else ("trusted", "a PEM public")
    try:
        data = path.read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not {kind} key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 {'' if private else 'public '}key (make one with tierwise keygen)")
    return key


def load_private_key(path: str | Path) -> Any:
    return _load_pem(Path(path), private=True)


def load_public_key(path: str | Path) -> TrustedKey:
    key = _load_pem(Path(path), private=False)
    return TrustedKey(key, key_id(key), str(path))


def load_trusted_keys(keys: Iterable[Any]) -> list[TrustedKey]:
    """Trusted keys from paths of PEM public keys (or already loaded ``TrustedKey``s)."""
    out: list[TrustedKey] = []
    for k in keys:
        out.append(k if isinstance(k, TrustedKey) else load_public_key(k))
    return out


def trusted_keys_from_env() -> list[TrustedKey]:
    raw = os.environ.get(ENV_TRUSTED_KEYS, "")
    return load_trusted_keys(p for p in raw.split(os.pathsep) if p.strip())


def policy_digest(policy_doc: Any) -> str:
    """sha256 of a policy's canonical JSON (sorted keys): what ``policy_versions`` records."""
    text = json.dumps(policy_doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _policy_identity(policy_doc: Any) -> tuple[str, str | None]:
    if not isinstance(policy_doc, Mapping) or "version" not in policy_doc:
        raise BundleError("the policy has no version: a signed policy needs 'version' and 'approval'")
    approval = policy_doc.get("approval")
    ticket = approval.get("ticket") if isinstance(approval, Mapping) else None
    return str(policy_doc["version"]), None if ticket is None else str(ticket)


def _policy_versions(manifest: bundle_io.Manifest) -> dict[str, dict[str, Any]] | None:
    raw = manifest.extra.get("policy_versions")
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not all(
            isinstance(v, Mapping) and isinstance(v.get("sha256"), str) for v in raw.values()):
        raise BundleError("manifest.json: policy_versions must map each version to {sha256, ticket}")
    return {str(k): dict(v) for k, v in raw.items()}


def check_policy_binding(manifest: bundle_io.Manifest, policy_doc: Any, *, required: bool) -> dict[str, Any]:
    """Check that the served policy's version is recorded in ``policy_versions`` with this content.

    ``required`` (trusted keys are configured): a manifest without ``policy_versions`` is refused.
    Returns a small report for ``/readyz``.
    """
    versions = _policy_versions(manifest)
    if versions is None:
        if required:
            raise BundleError("the bundle's manifest records no policy_versions, so the policy's version and "
                              "approval are not bound to its content; sign it with this tierwise (tierwise sign)")
        return {"bound": False}
    if policy_doc is None:
        raise BundleError("the policy given is not plain data, so its content cannot be checked against the "
                          "bundle's policy_versions; pass the policy YAML instead")
    version, ticket = _policy_identity(policy_doc)
    digest = policy_digest(policy_doc)
    if version not in versions:
        raise BundleError(f"policy version {version!r} is not one the bundle's signer approved "
                          f"({sorted(versions)}); get the policy approved and the bundle re-signed")
    if versions[version]["sha256"] != digest:
        raise BundleError(
            f"policy version {version!r} (approval ticket {ticket!r}) was approved with content "
            f"{versions[version]['sha256'][:12]}..., this policy's content is {digest[:12]}...: the policy "
            "changed under an unchanged version. Bump its version, get it approved and re-sign the bundle"
        )
    return {"bound": True, "version": version, "sha256": digest}


def check_bundle_trust(verified: bundle_io.VerifiedBundle, trusted_keys: Iterable[TrustedKey] | None,
                       expect_sha256: str | None = None) -> dict[str, Any]:
    """Check a verified bundle's signature against ``trusted_keys`` and its digest against
    ``expect_sha256``; return what ``/readyz`` shows (``warnings`` when nothing is enforced)."""
    keys = list(trusted_keys or ())
    digest = verified.digest
    info: dict[str, Any] = {"bundle_sha256": digest, "signed": verified.signature is not None,
                            "signature_verified": False, "key_id": None, "pinned": expect_sha256 is not None,
                            "warnings": []}
    if expect_sha256 is not None:
        want = expect_sha256.strip().lower()
        if want != digest:
            raise BundleError(f"the bundle's manifest sha256 is {digest}, not the pinned {want} "
                              "(--expect-sha256): refusing to load it")
    doc = None
    if verified.signature is not None:
        try:
            doc = json.loads(verified.signature.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
            if keys:
                raise BundleError(f"{bundle_io.SIGNATURE_FILE} is not a tierwise signature; refusing the bundle")
            doc = None
        if doc is not None:
            info["key_id"] = doc.get("key_id")
    if not keys:
        if expect_sha256 is None:
            info["warnings"].append(NO_KEY_WARNING)
        return info
    if verified.signature is None:
        raise BundleError(f"the bundle is unsigned ({bundle_io.SIGNATURE_FILE} is missing) and trusted keys are "
                          f"configured ({', '.join(k.id for k in keys)}); sign it with tierwise sign")
    assert doc is not None  # noqa: S101 - set above whenever keys are configured and a signature exists
    if doc.get("algorithm") != ALGORITHM:
        raise BundleError(f"{bundle_io.SIGNATURE_FILE}: unsupported algorithm {doc.get('algorithm')!r}")
    try:
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{bundle_io.SIGNATURE_FILE}: the signature is not base64") from None
    from cryptography.exceptions import InvalidSignature

    for k in keys:
        try:
            k.key.verify(sig, DOMAIN + verified.manifest_bytes)
        except InvalidSignature:
            continue
        info.update(signature_verified=True, key_id=k.id)
        return info
    raise BundleError(
        f"the bundle's signature does not verify with any trusted key ({', '.join(k.id for k in keys)}; the "
        f"signature names key {doc.get('key_id')!r}): the manifest was changed after signing, or it was signed "
        "by a key this router does not trust. Refusing to load it"
    )


def _sign_dir(directory: Path, private_key: Any, ledger: Path | None) -> dict[str, Any]:
    import yaml

    verified = bundle_io.read_verified(directory, names=(bundle_io.POLICY_FILE,))
    try:
        policy_doc = yaml.safe_load(verified.contents[bundle_io.POLICY_FILE])
    except yaml.YAMLError as exc:
        raise BundleError(f"{directory / bundle_io.POLICY_FILE}: not valid YAML: {exc}") from None
    version, ticket = _policy_identity(policy_doc)
    digest = policy_digest(policy_doc)
    versions = _policy_versions(verified.manifest) or {}
    ledger_doc: dict[str, Any] = {}
    if ledger is not None and ledger.is_file():
        try:
            ledger_doc = json.loads(ledger.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{ledger}: cannot read the policy ledger ({exc})") from None
        if not isinstance(ledger_doc, dict):
            raise ConfigError(f"{ledger}: the policy ledger must be a JSON object")
    for source, known in (("the bundle's policy_versions", versions), (f"ledger {ledger}", ledger_doc)):
        entry = known.get(version)
        if entry is not None and entry.get("sha256") != digest:
            raise BundleError(
                f"refusing to sign: policy version {version!r} is recorded in {source} with content "
                f"{str(entry.get('sha256'))[:12]}..., this policy.yaml is {digest[:12]}...: the policy changed "
                "under an unchanged version. Bump its version (and get it approved) first"
            )
    merged = {**ledger_doc, **versions, version: {"sha256": digest, "ticket": ticket}}
    if verified.manifest.extra.get("policy_versions") != merged:
        bundle_io.update_manifest(directory, policy_versions=merged)
        verified = bundle_io.read_verified(directory, names=())
    public = private_key.public_key()
    signature = private_key.sign(DOMAIN + verified.manifest_bytes)
    doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "key_id": key_id(public),
        "manifest_sha256": verified.digest,
        "signed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    bundle_io._atomic_write(directory / bundle_io.SIGNATURE_FILE,  # noqa: SLF001 - same package
                            (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    if ledger is not None:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps({**ledger_doc, version: merged[version]}, indent=2, sort_keys=True) + "\n",
                          encoding="utf-8")
    return doc


def sign_bundle(path: str | Path, key: str | Path, *, ledger: str | Path | None = None) -> dict[str, Any]:
    """Sign a bundle directory (repacking ``<dir>.tar.gz`` next to it when there is one) or a
    ``.tar.gz`` (unpacked, signed and repacked in place). Returns the signature document."""
    path = Path(path)
    private_key = load_private_key(key)
    ledger_path = Path(ledger) if ledger is not None else None
    if path.is_dir():
        doc = _sign_dir(path, private_key, ledger_path)
        archive = path.with_name(path.name + ".tar.gz")
        if archive.is_file():
            bundle_io.pack(path, archive)
        return doc
    if path.is_file() and bundle_io.is_archive(path):
        with tempfile.TemporaryDirectory(prefix="tierwise-sign-") as tmp:
            directory = bundle_io.unpack(path, tmp)
            doc = _sign_dir(directory, private_key, ledger_path)
            bundle_io.pack(directory, path)
        return doc
    raise BundleError(f"bundle {path} does not exist (give a bundle directory or its .tar.gz)")


# -- CLI: tierwise keygen / tierwise sign ----------------------------------------------------------
def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="path prefix: writes <out>.key (private, 0600) and <out>.pub")


def run_keygen(args: argparse.Namespace) -> int:
    private_path, public_path = generate_keypair(args.out)
    tk = load_public_key(public_path)
    sys.stdout.write(f"wrote {private_path} (keep it off the serving machines) and {public_path} "
                     f"(key id {tk.id}: give it to routers with --trusted-key)\n")
    return 0


def add_sign_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    parser.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM, from tierwise keygen)")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="JSON file of policy versions this signer approved (read, checked, updated)")


def run_sign(args: argparse.Namespace) -> int:
    doc = sign_bundle(args.bundle, args.key, ledger=args.ledger)
    sys.stdout.write(f"signed {args.bundle}: manifest sha256 {doc['manifest_sha256']} with key {doc['key_id']}\n")
    return 0
