"""Deterministic detectors (issue 14): validators, canonical text and offsets, decoded views,
gitleaks rules with their allowlists, the obfuscation set's recall floor and false flags on real
prompts. The rules are compiled from the shared gitleaks config (skipped without it)."""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from pathlib import Path

import pytest

from classifier.errors import BundleError, ConfigError
from classifier.serving import detectors as D
from classifier.serving.detectors import Detectors, build_rules, canonical

DATA = Path(__file__).resolve().parent / "data"
AWS = "AKIAQ3EGRUZ4TWLN6YJ5"  # fabricated, matches the aws-access-token shape ([A-Z2-7]{16})


@pytest.fixture(scope="module")
def rules_doc(shared_data: Path) -> dict:
    return build_rules(shared_data / "gitleaks" / "gitleaks.toml")


@pytest.fixture(scope="module")
def det(rules_doc: dict) -> Detectors:
    return Detectors(rules_doc)


def rules_of(hits) -> set[str]:
    return {h.rule for h in hits}


# -- validators -----------------------------------------------------------------------------------
def test_payment_card_needs_luhn_and_issuer() -> None:
    assert D.card_ok("4539148803436467")
    assert not D.card_ok("4539148803436468")  # Luhn fails
    assert not D.card_ok("9539148803436461")  # no issuer starts with 9
    assert not D.card_ok("4111111111111111")  # the famous test number: too few distinct digits
    assert D.card_ok("371449635398431")  # amex, 15 digits
    assert not D.card_ok("3714496353984310")  # amex prefix with 16 digits


def test_ssn_area_group_serial_rules(det: Detectors) -> None:
    assert D.ssn_ok("219", "09", "9998")
    for area, group, serial in [("000", "12", "3456"), ("666", "12", "3456"), ("912", "12", "3456"),
                                ("219", "00", "3456"), ("219", "09", "0000"), ("078", "05", "1120")]:
        assert not D.ssn_ok(area, group, serial), (area, group, serial)
    assert rules_of(det.scan("SSN 219-09-9998")) == {"us-ssn"}
    assert det.scan("SSN 666-09-9998") == []
    assert rules_of(det.scan("my ssn: 219099998")) == {"us-ssn"}  # bare digits only with context
    assert det.scan("order 219099998 shipped") == []


def test_iban_mod97_and_country_length() -> None:
    assert D.iban_ok("GB82WEST12345698765432")
    assert not D.iban_ok("GB83WEST12345698765432")  # checksum
    assert not D.iban_ok("GB82WEST1234569876543")  # GB is 22 long
    assert D.iban_ok("DE89370400440532013000")


def test_phone_email_ip_and_dob(det: Detectors, shared_data: Path) -> None:
    assert rules_of(det.scan("call (415) 555-2671 today")) == {"phone"}
    assert rules_of(det.scan("call +44 20 7946 0958")) == {"phone"}
    assert det.scan("the range 123-456-7890 in the test") == []  # area code 123 is not NANP
    assert rules_of(det.scan("mail zorblat.quenn@protonmail.com")) == {"email"}
    assert det.scan("mail user@example.com or jane.doe@test.org") == []  # documentation addresses
    assert rules_of(det.scan("client 84.12.33.9 failed")) == {"ipv4"}
    assert det.scan("bind 192.168.1.10 and 127.0.0.1, dns 8.8.8.8, version 1.2.3.4") == []
    assert rules_of(det.scan("peer 2a03:2880:f12f:83:face:b00c:0:25de")) == {"ipv6"}
    assert det.scan("use std::vector and ::1 and fe80::1") == []
    # date-of-birth is opt-in (a date alone is a quasi-identifier the data set labels none)
    assert det.scan("Patient born on March 3, 1985 in Ohio") == []
    dob = Detectors(build_rules(shared_data / "gitleaks" / "gitleaks.toml", pii=D.ALL_PII_RULES))
    assert rules_of(dob.scan("Patient born on March 3, 1985 in Ohio")) == {"date-of-birth"}
    assert dob.scan("The company was founded on March 3, 1985") == []
    # business and fictional numbers are nobody's personal data
    assert det.scan("Phone: (888) 709-8324, or (555) 555-0100 in the film") == []
    assert rules_of(det.scan("Phone: (212) 796-8351")) == {"phone"}


def test_code_identifier_after_a_token_prefix_is_not_a_secret(det: Detectors) -> None:
    # a gitleaks rule (grafana glc_) matches a C function name; the identifier shape rejects it
    assert det.scan("static void GLC_CreateLightmapTexturesIndividual(void);") == []
    token = "glc_" + "eyJvIjoiMTIzNDU2IiwibiI6InN0YWNrLTEyMzQ1Ni1obS1yZWFkIiwiayI6IjEyMzQ1Njc4OTAx"
    assert {h.cls for h in det.scan(f"GRAFANA_TOKEN={token}")} == {"credential"}


# -- canonical form, offsets, decoded views ---------------------------------------------------------
def test_canonical_folds_and_maps_offsets_back() -> None:
    text = "key \uff21\uff2b\u200bIA\u00ad \\u0041"
    v = canonical(text)
    assert v.text == "key AKIA A"
    # "A" (fullwidth) at 4, "K" at 5, zero-width at 6 removed, "IA" 7-8, soft hyphen 9 removed
    assert v.span(4, 8) == (4, 9)
    assert v.span(9, 10) == (11, 17)  # the \\u0041 escape maps to its six characters
    assert canonical("plain ascii").starts is None  # the common case costs nothing
    assert canonical("Давай создадим диалог").starts is None  # Cyrillic prose is left alone
    assert canonical("\u0410KIA").text == "AKIA"  # a Cyrillic A next to Latin letters is folded


@pytest.mark.parametrize("hide", [
    lambda k: "\uff21\uff2b\uff29\uff21" + k[4:],  # fullwidth prefix
    lambda k: "\u200b".join(k),  # zero-width between every character
    lambda k: k[:8] + "\u00ad" + k[8:],  # soft hyphen
    lambda k: "\u0410" + k[1:],  # Cyrillic A
    lambda k: "".join(f"\\u{ord(c):04x}" for c in k),  # JSON escapes
])
def test_obfuscated_key_found_with_offsets_of_the_original(det: Detectors, hide) -> None:
    hidden = hide(AWS)
    text = f"deploy with {hidden} now"
    hits = [h for h in det.scan(text) if h.rule == "aws-access-token"]
    assert len(hits) == 1
    assert (hits[0].start, hits[0].end) == (12, 12 + len(hidden))


def test_encoded_blobs_are_decoded_once_and_report_the_blob_span(det: Detectors) -> None:
    line = f"aws_access_key_id={AWS}"
    for blob in (base64.b64encode(line.encode()).decode(), line.encode().hex(),
                 "".join(f"%{b:02X}" for b in AWS.encode())):
        text = f"what is this: {blob} ?"
        hits = [h for h in det.scan(text) if h.rule == "aws-access-token"]
        assert hits and (hits[0].start, hits[0].end) == (14, 14 + len(blob)), blob
    twice = base64.b64encode(base64.b64encode(line.encode())).decode()
    assert det.scan(f"double: {twice}") == []  # one level of decoding only (documented)
    assert det.scan("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08") == []


def test_split_keys_and_spelled_numbers(det: Detectors) -> None:
    spaced = " ".join(AWS[k:k + 4] for k in range(0, len(AWS), 4))
    text = f"the key in pieces: {spaced}\nthanks a lot"
    hits = [h for h in det.scan(text) if h.rule == "aws-access-token"]
    assert hits and text[hits[0].start:hits[0].end].replace(" ", "") == AWS
    text = "my social is two one nine, zero nine, nine nine nine eight"
    assert rules_of(det.scan(text)) == {"us-ssn"}
    assert det.scan("one two three four, count with me") == []


# -- gitleaks semantics -----------------------------------------------------------------------------
def test_gitleaks_entropy_allowlists_and_placeholders(det: Detectors) -> None:
    assert "generic-api-key" in rules_of(det.scan('api_token = "f8Kq2Lz9Xw4Rt7Vb1Nm3"'))
    assert det.scan('api_token = "aaaaaaaaaaaaaaaa1"') == []  # entropy under the rule's 3.5
    assert det.scan('primary_key = "f8Kq2Lz9Xw4Rt7Vb1Nm3"') == []  # allowlisted match (primary key)
    assert det.scan('api_token = "YOUR_API_TOKEN_1234"') == []  # placeholder
    assert det.scan('password = "${DB_PASSWORD}"') == []
    assert det.scan("token: {{ secrets.NPM_TOKEN }}") == []
    assert det.scan("ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") == []
    assert det.scan("Write a regex that matches AWS keys: AKIA[0-9A-Z]{16}") == []


@pytest.mark.slow
def test_keyword_engines_find_the_same(rules_doc: dict) -> None:
    texts = [line for line in (DATA / "obfuscation.jsonl").read_text(encoding="utf-8").split("\n") if line]
    texts = [json.loads(line)["text"] for line in texts][::3]
    results = {}
    for engine in ("ahocorasick", "hyperscan", "re", "in"):
        pytest.importorskip(engine) if engine in ("ahocorasick", "hyperscan") else None
        d = Detectors(rules_doc, keyword_engine=engine)
        results[engine] = [d.scan(t) for t in texts]
    first = next(iter(results.values()))
    assert all(r == first for r in results.values())
    with pytest.raises(ConfigError, match="keyword engine"):
        Detectors(rules_doc, keyword_engine="hyperscan-please")


def test_rules_file_round_trip_and_bad_files(rules_doc: dict, tmp_path: Path) -> None:
    data = D.rules_bytes(rules_doc)
    d = Detectors.from_bytes(data)
    assert d.info()["credential_rules"] == len(rules_doc["credential"]["rules"]) > 200
    assert rules_doc["compiled_from"]["gitleaks"]["sha256"] and "pkcs12-file" in rules_doc["credential"]["skipped"]
    with pytest.raises(BundleError, match="not valid JSON"):
        Detectors.from_bytes(b"{nope")
    with pytest.raises(BundleError, match="format_version"):
        Detectors({**rules_doc, "format_version": 99})
    bad = json.loads(data)
    bad["credential"]["rules"][0]["regex"] = "(unclosed"
    with pytest.raises(BundleError, match="does not compile"):
        Detectors(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        build_rules(tmp_path / "missing.toml")


# -- measured floors --------------------------------------------------------------------------------
def test_obfuscation_set_recall_floor(det: Detectors) -> None:
    rows = [json.loads(line) for line in (DATA / "obfuscation.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert {"id", "text", "sensitivity", "obfuscation"} <= set(rows[0])
    found: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for r in rows:
        classes = {h.cls for h in det.scan(r["text"])}
        hit = r["sensitivity"] in classes if r["sensitivity"] != "none" else not classes
        found[(r["sensitivity"], r["obfuscation"])].append(hit)
    cred = [x for (s, _), v in found.items() if s == "credential" for x in v]
    assert sum(cred) / len(cred) >= 0.95
    for (s, obf), v in found.items():
        if s == "pii":
            assert sum(v) / len(v) >= 0.8, (obf, sum(v), len(v))  # reported per obfuscation in the bench
    none = [x for (s, _), v in found.items() if s == "none" for x in v]
    assert sum(none) / len(none) >= 0.95


def test_false_flags_on_real_prompts(det: Detectors, shared_data: Path) -> None:
    path = shared_data / "arena-hard" / "data" / "arena-hard-v0.1" / "question.jsonl"
    prompts = [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    flagged = [p for p in prompts if det.scan(p)]
    # read: the one flagged v0.1 prompt lists fabricated records (a card, a phone) on purpose
    assert len(flagged) / len(prompts) <= 0.01, [p[:80] for p in flagged]


# -- bare provider tokens (rules derived from gitleaks' own secret patterns) ----------------------
PLAID = "access-sandbox-35336eb5-80c2-139d-4206-9f7e0f51e01e"  # fabricated, plaid-api-token's shape
PREFECT = "pnu_HHFcvcm1dUgJ5tMvpfVq5dKg7Z24zrsoMgAs"  # fabricated, prefect-api-token's shape


def test_bare_rules_find_provider_tokens_without_the_providers_name(det: Detectors) -> None:
    # gitleaks needs "plaid" in the text and a closing quote or space after a unique token
    assert rules_of(det.scan(f"What kind of key is this? {PLAID}")) == {"plaid-api-token-bare"}
    assert rules_of(det.scan(f"request headers={{'X-Api-Key': '{PLAID}'}}")) == {"plaid-api-token-bare"}
    assert rules_of(det.scan(f"see the log (auth {PREFECT})")) == {"prefect-api-token-bare"}
    assert rules_of(det.scan("What is this? test_23bdf08f14e11b0d77cffd2ed484db43fcd")) == {"lob-api-key-bare"}


def test_a_span_both_rules_find_is_one_hit_named_by_gitleaks_rule(det: Detectors) -> None:
    hits = det.scan(f"PLAID_ACCESS_TOKEN={PLAID}")
    assert [h.rule for h in hits] == ["plaid-api-token"]


def test_bare_rules_leave_defanged_and_prefixless_values_alone(det: Detectors) -> None:
    assert det.scan('"apiKey": "NRAK-xemx1x1x1x1x1x1x1x1x1x1x1x1"') == []  # low entropy: a placeholder
    assert det.scan("md5 of the file: 05097bccd95fbbe6da7f9109bcc4ba2b") == []  # no prefix: a hash looks the same
    assert det.scan("the access-control header and a pat on the back") == []


def test_bare_rules_are_derived_only_from_the_helpers_shapes(rules_doc: dict, shared_data: Path) -> None:
    bare = {r["id"]: r for r in rules_doc["credential"]["rules"] if r.get("derived_from")}
    assert "plaid-api-token-bare" in bare and "linear-client-secret-bare" not in bare
    assert all(min(len(w) for w in r["keywords"]) >= D.BARE_MIN_PREFIX and r["entropy"] >= D.BARE_MIN_ENTROPY
               for r in bare.values())
    assert D._secret_group(r"(?i)\b(pnu_[a-z]{36})(?:[\x60'" + '"' + r"\s;]|\\[nr]|$)") == ("(?i)", "pnu_[a-z]{36}")
    assert D._secret_group(r"-----BEGIN PRIVATE KEY-----[\s\S]*?KEY-----") is None
    plain = build_rules(shared_data / "gitleaks" / "gitleaks.toml", bare=False)
    assert not any(r.get("derived_from") for r in plain["credential"]["rules"])
    assert Detectors(plain).scan(f"What kind of key is this? {PLAID}") == []


def test_literal_prefixes_cover_every_alternative_and_anchor_only_when_all_start_with_a_keyword() -> None:
    assert D._literal_prefixes("(live|test)_[a-f0-9]{35}") == ["live_", "test_"]
    assert D._literal_prefixes("abc[0-9]{20}|[a-z]{30}") == ["abc", ""]  # the second has no prefix
    assert D._top_level_alternatives("a(b|c)[|]d|e") == ["a(b|c)[|]d", "e"]
    tail = r"(?:[\x60'" + '"' + r"\s;]|\\[nr]|$)"
    assert D._token_starts_with_keyword(r"\b(ghp_[0-9a-zA-Z]{36})" + tail, ["ghp_"])
    assert not D._token_starts_with_keyword(r"\b(ghp_[0-9a-z]{36}|[0-9a-f]{40})" + tail, ["ghp_"])
    assert not D._token_starts_with_keyword(r"(?i)[\w.-]{0,50}?(?:plaid)[\s'" + '"' + r"]{0,3}=(access-[a-f0-9]{8})" + tail,
                                            ["plaid"])  # semi-generic: the match starts at the name


# -- the split-key prefilter (a rule's core, searched once per run) ----------------------------
def test_end_free_core_strips_only_known_tails_and_refuses_lookahead() -> None:
    assert D.end_free_core(r"\b((?:AKIA|ASIA)[A-Z2-7]{16})\b") == r"\b((?:AKIA|ASIA)[A-Z2-7]{16})"
    assert D.end_free_core(r"(?i)\b(key-[a-f0-9]{32})" + D._BARE_TAIL) == r"(?i)\b(key-[a-f0-9]{32})"
    assert D.end_free_core(r"ghp_[0-9a-zA-Z]{36}") == r"ghp_[0-9a-zA-Z]{36}"  # no tail: the rule is its core
    assert D.end_free_core(r"[\]$]x") == r"[\]$]x"  # a $ inside a class is a character
    # something still looks at what follows the key: no core, the search tries every end
    assert D.end_free_core(r"\b(a[0-9]{8})\b|b[0-9]{8}") is None
    assert D.end_free_core(r"(x{40}\b)" + D._GITLEAKS_TAIL) is None
    assert D.end_free_core(r"abc(?=def)") is None
    assert D.end_free_core(r"abc$") is None
    assert D.end_free_core(r"abc\\b") == r"abc\\b"  # a backslash, then b: a literal, not a tail
    # every assertion deleted, classes left alone; a lookaround cannot be deleted safely
    assert D.context_free(r"(?i)\b(key-[a-f0-9]{32})(?:[\s;]|\\[nr]|$)") == r"(?i)(key-[a-f0-9]{32})(?:[\s;]|\\[nr]|)"
    assert D.context_free(r"^[^$\b]x\Bz\z") == r"[^$\b]xz"
    assert D.context_free(r"a(?<=b)c") is None


@pytest.mark.slow
def test_split_key_prefilter_changes_no_hit(det: Detectors, rules_doc: dict) -> None:
    """Every rule the prefilter can rule out: its own keys split into chunks, followed by prose
    (so only a prefix of the joined run ends where the key ends), and prose holding its keywords;
    with and without the prefilter, the split-key search finds exactly the same spans."""
    import numpy as np

    from classifier.data.secrets_gen import RegexSampler

    rng = np.random.default_rng(0)
    raw = {r["id"]: r for r in rules_doc["credential"]["rules"]}
    texts: list[str] = []
    checked = 0
    for rule in det.rules:
        if not (rule.distinctive and rule.core is not None):
            continue
        checked += 1
        sampler = RegexSampler(raw[rule.id]["regex"])
        for _ in range(2):
            key = "".join(sampler.sample(rng).text.split())
            chunks = " ".join(key[k:k + 5] for k in range(0, len(key), 5))
            texts.append(f"here it is {chunks} patient euthanasia and more words after it")
            texts.append(f"{chunks}\nthanks")
        texts.append("the " + " ".join(rule.keywords) + " of a patient in asia, key- words " * 3)
    assert checked > 150  # the shipped rules: nearly every distinctive rule has a core
    reference = Detectors(rules_doc)
    reference._split_prefilter = False  # every rule tried at every end, every run
    found_any = 0
    for text in texts:
        base = canonical(text)
        with_filter: list = []
        without: list = []
        det._scan_split(base, with_filter)
        reference._scan_split(base, without)
        assert with_filter == without, text
        assert det.scan(text) == reference.scan(text), text  # the whole-text prefilter too
        found_any += bool(without)
    assert found_any > 100  # the split keys are found, so the comparison covers real matches


def test_number_rules_scan_only_near_number_runs_and_find_the_same() -> None:
    """Number-shaped personal data is searched only near runs of digits (``_near``): on random
    texts dense in digits, separators, capitals and SSN keywords, the same matches as one scan of
    the whole text; and no rule's widest match could reach past a window."""
    import random
    import re._parser as sre_parse

    for p in (D._PHONE, D._SSN, D._SSN_BARE, D._CARD, D._IBAN, D._IPV4):
        assert sre_parse.parse(p.pattern, p.flags).getwidth()[1] < D.NUMBER_WINDOW - 8, p.pattern
    rng = random.Random(0)
    # real shapes, shapes that only look like them ("+1 2 34", "GB82 WEST"), and what sits between
    shapes = ["4111 1111 1111 1111", "4111-1111-1111-1111", "415 555 0199", "(415) 555-0199", "+44 20 7946 0958",
              "078-05-1120", "219 09 9998", "219099998", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000",
              "8.8.4.4", "93.184.216.34", "+1 2 34", "GB82 WEST", "12 34", "7.5", "2024-01-02"]
    glue = ["", " ", "  ", "-", ".", "(", ")", "+", "/", "\n", ", ", "a", " word ", "SSN ", "ssn: ",
            "social security number ", "ss# ", "GB", "X", " 1 2 3 4 5 6 7 8 9 0 ", " and more prose, " * 3]
    texts = ["".join(rng.choice(shapes) + rng.choice(glue) for _ in range(rng.randint(10, 120))) for _ in range(200)]
    prose = "Some words before anything that looks like a number at all, and then some more of them. " * 3
    texts += [prose + f"My {kw} {n} thanks. " + prose for kw in ("social security number", "SSN:", "ss#")
              for n in ("219099998", "219-09-9998")]  # the keyword far before the digits
    windowed = []
    for t in texts:
        out: list = []
        D.scan_pii(t, out)
        windowed.append(out)
    whole_text = D._windows
    try:
        D._windows = lambda text, runs, chars=None: [(0, len(text))]  # one window: the whole text
        reference = []
        for t in texts:
            out = []
            D.scan_pii(t, out)
            reference.append(out)
    finally:
        D._windows = whole_text
    assert windowed == reference
    assert sum(map(len, reference)) > 300  # the texts hold many real matches
