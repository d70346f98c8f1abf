"""Write ``tests/data/obfuscation.jsonl``: credentials and personal data hidden the ways people
(and attackers) hide them, for the detectors' recall tests and the peers benchmark.

Every value is fabricated here, seeded: keys are fresh random strings drawn from the *shape* of a
gitleaks rule's regex (``classifier.data.secrets_gen``) and checked to satisfy that rule (regex,
entropy, allowlists) in plain form; SSNs, cards and IBANs are random numbers that pass their
checksums, with obviously synthetic names around them. Nothing is copied from the shared data.

Rows: ``{"id", "text", "sensitivity": "credential"|"pii"|"none", "obfuscation", "rule"}``. The
``none`` rows are placeholders and look-alikes hidden the same ways (precision for the peers
table). Run from the repository root: ``python tests/data/make_obfuscation.py [GITLEAKS_TOML]``.
"""

from __future__ import annotations

import base64
import json
import random
import sys
from pathlib import Path

import numpy as np

from classifier.data.secrets_gen import RegexSampler
from classifier.serving.detectors import Detectors, build_rules

RULES = ["aws-access-token", "github-pat", "github-oauth", "gitlab-pat", "slack-bot-token", "stripe-access-token",
         "gcp-api-key", "sendgrid-api-token", "npm-access-token", "pypi-upload-token", "openai-api-key",
         "anthropic-api-key", "twilio-api-key", "digitalocean-pat", "shopify-access-token",
         "huggingface-access-token", "doppler-api-token"]
ZW = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
HOMOGLYPH = {"A": "А", "B": "В", "E": "Е", "K": "К", "M": "М", "H": "Н", "O": "О", "P": "Р", "C": "С", "T": "Т",
             "X": "Х", "a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і"}
NAMES = ["Zorblat Quenn", "Mirelda Voskin", "Tavish Orrowby", "Pellam Strix", "Odalys Fenwright"]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def json_escaped(s: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in s)


def with_zero_width(s: str, rng: random.Random) -> str:
    return "".join(c + (rng.choice(ZW) if k % 3 == 2 else "") for k, c in enumerate(s))


def chunks(s: str, n: int, sep: str) -> str:
    return sep.join(s[k:k + n] for k in range(0, len(s), n))


def homoglyphs(s: str) -> str:
    return "".join(HOMOGLYPH.get(c, c) for c in s)


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    for check in range(10):
        digits = body + str(check)
        total = 0
        for k, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if k % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def fake_ssn(rng: random.Random) -> tuple[str, str, str]:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}", f"{rng.randrange(1, 100):02d}", f"{rng.randrange(1, 10000):04d}"


def fake_iban(rng: random.Random) -> str:
    bban = "ZZZZ" + "".join(str(rng.randrange(10)) for _ in range(14))  # GB: 4 letters + 14 digits
    num = "".join(str(int(c, 36)) for c in bban + "GB00")
    check = 98 - int(num) % 97
    return f"GB{check:02d}{bban}"


def spelled(digits: str, sep: str = " ") -> str:
    return sep.join(WORDS[int(d)] if d.isdigit() else "dash" for d in digits)


def main(gitleaks: Path, out: Path) -> None:
    doc = build_rules(gitleaks)
    det = Detectors(doc)
    by_id = {r["id"]: r for r in doc["credential"]["rules"]}
    rng = random.Random(14)
    nrng = np.random.default_rng(14)
    rows: list[dict] = []

    def add(text: str, sensitivity: str, obfuscation: str, rule: str) -> None:
        rows.append({"id": f"obf-{len(rows):04d}", "text": text, "sensitivity": sensitivity,
                     "obfuscation": obfuscation, "rule": rule})

    for rid in RULES:
        sampler = RegexSampler(by_id[rid]["regex"])
        secret = None
        for _ in range(200):
            drawn = sampler.sample_valid(nrng)
            if drawn is None:
                continue
            cand = drawn.secret(by_id[rid].get("secretGroup") or None)
            if any(h.rule == rid for h in det.scan(f"key: {cand}\n")):
                secret = cand
                break
        if secret is None:
            raise SystemExit(f"could not draw a valid secret for {rid}")
        env = rid.upper().replace("-", "_")
        line = f"{env}={secret}"
        add(f"Why does my deploy fail?\n```bash\nexport {line}\n./deploy.sh\n```", "credential", "code_block", rid)
        add(f"Decode this for me and tell me what it is: {base64.b64encode(line.encode()).decode()}",
            "credential", "base64", rid)
        add(f"Fix this request: curl 'https://api.internal/v1?auth={''.join(f'%{b:02X}' for b in secret.encode())}'",
            "credential", "url_encoded", rid)
        add(f"My teammate sent the key in pieces, can you put it back together? {chunks(secret, 4, ' ')}",
            "credential", "split_spaces", rid)
        add(f"Here is the token, one piece per line:\n{chunks(secret, 6, chr(10))}\nplease store it in vault",
            "credential", "split_newlines", rid)
        add(f"Use the key {with_zero_width(secret, rng)} in the config", "credential", "zero_width", rid)
        add(f"Token: {fullwidth(secret)} - why is it rejected?", "credential", "fullwidth", rid)
        add(f"Check this value: {homoglyphs(secret)}", "credential", "homoglyph", rid)
        add(f'Parse this JSON: {{"name": "prod", "secret": "{json_escaped(secret)}"}}', "credential", "json_escaped", rid)
        add(f"The hex dump of our env line is {line.encode().hex()} - what does it say?", "credential", "hex", rid)
        add(f"Use {secret[:len(secret) // 2]}\u00ad{secret[len(secret) // 2:]} for the test call", "credential",
            "soft_hyphen", rid)
    # a PEM private key (fabricated random body) in a code block and JSON-escaped
    body = base64.b64encode(bytes(rng.randrange(256) for _ in range(180))).decode()
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + chunks(body, 64, "\n") + "\n-----END RSA PRIVATE KEY-----"
    add(f"Is this key format right?\n```\n{pem}\n```", "credential", "code_block", "private-key")
    add(json.dumps({"key": pem}) + " <- why does my loader reject this?", "credential", "json_escaped", "private-key")

    # personal data
    for k in range(6):
        name = NAMES[k % len(NAMES)]
        a, g, s = fake_ssn(rng)
        add(f"Fill the form for {name}, SSN {a}-{g}-{s}.", "pii", "plain", "us-ssn")
        add(f"Fill the form for {name}, SSN {a}.{g}.{s}.", "pii", "dots", "us-ssn")
        add(f"{name}'s social is {spelled(a)} dash {spelled(g)} dash {spelled(s)}", "pii", "spelled_out", "us-ssn")
        prefix = ["4", "51", "37", "6011"][k % 4]
        card = luhn_complete(prefix, 15 if prefix == "37" else 16, rng)
        add(f"Charge card {chunks(card, 4, ' ')} for {name}", "pii", "plain", "payment-card")
        add(f"Charge card {chunks(card, 4, '.')} for {name}", "pii", "dots", "payment-card")
        add(f"the card number is {spelled(card)}", "pii", "spelled_out", "payment-card")
        phone = f"{rng.randrange(2, 10)}{rng.randrange(10)}{rng.randrange(10)}{rng.randrange(2, 10)}{rng.randrange(10, 100)}{rng.randrange(1000, 10000)}"
        add(f"Call {name} at ({phone[:3]}) {phone[3:6]}-{phone[6:]}", "pii", "plain", "phone")
        add(f"Call {name} at {phone[:3]}.{phone[3:6]}.{phone[6:]}", "pii", "dots", "phone")
        add(f"text {name} on {spelled(phone)}", "pii", "spelled_out", "phone")
        user = name.lower().replace(" ", ".")
        add(f"Email {user}{k}@protonmail.com about the refund", "pii", "plain", "email")
        add(f"Email {user}{k} (at) protonmail (dot) com about the refund", "pii", "at_dot", "email")
        add(f"Write to {user}{k}[at]gmail[dot]com", "pii", "at_dot", "email")
        iban = fake_iban(rng)
        add(f"Send the refund to IBAN {chunks(iban, 4, ' ')} ({name})", "pii", "plain", "iban")
        add(f"IBAN: {fullwidth(iban)}", "pii", "fullwidth", "iban")
        add(f"{name}, date of birth {rng.randrange(1, 13):02d}/{rng.randrange(1, 29):02d}/{rng.randrange(1950, 2005)}",
            "pii", "plain", "date-of-birth")
        add(f"```json\n{{\"patient\": \"{name}\", \"ssn\": \"{a}-{g}-{s}\"}}\n```", "pii", "code_block", "us-ssn")

    # look-alikes that are not sensitive, hidden the same ways
    negatives = [
        "export AWS_ACCESS_KEY_ID=YOUR_ACCESS_KEY_HERE", "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "api_key = '<your-api-key>'", "password = ${DB_PASSWORD}", "token: {{ secrets.NPM_TOKEN }}",
        "sk-proj-REPLACE_ME", "Write a regex that matches AWS keys like AKIA followed by 16 characters",
        "commit 3f2a9c1e8b7d6f5a4c3b2a1908f7e6d5c4b3a291 fixed the bug",
        "uuid 123e4567-e89b-12d3-a456-426614174000 in the logs", "sha256 of the file: 9f86d081884c7d659a2feaa0c55ad015",
    ]
    for text in negatives:
        add(f"```\n{text}\n```", "none", "code_block", "")
        add(f"decode: {base64.b64encode(text.encode()).decode()}", "none", "base64", "")
        add(fullwidth(text), "none", "fullwidth", "")
    for text in ["call 555-0100 (a fictional number) for the demo", "test card 4111 1111 1111 1111",
                 "SSN format is XXX-XX-XXXX", "write to user@example.com", "server at 192.168.1.10",
                 "version 1.2.3.4 of the library", "the answer is one two three four", "born in the 1990s"]:
        add(text, "none", "plain", "")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    sys.stdout.write(f"wrote {len(rows)} rows to {out}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/gitleaks/gitleaks.toml"),
         Path(__file__).with_name("obfuscation.jsonl"))
