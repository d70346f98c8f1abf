"""The detectors' Hyperscan prefilter: it names every pattern that matches (a superset), it says
so only where it can vouch, and the detectors' hits are the same with and without it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from classifier.serving import detectors as D
from classifier.serving.detectors import Detectors, build_rules
from classifier.serving.prefilter import RegexPrefilter

pytest.importorskip("hyperscan")

DATA = Path(__file__).resolve().parent / "data"
# contexts a pattern's sample is planted in: ASCII prose, and prose with non-ASCII characters
# right beside the sample (curly quotes, an accented word, CJK, an emoji)
CONTEXTS = ("use {} here", "note: {}\nthanks", "“{}” — café 東京 ✓", "é{}é", "{}’s value 🚀")


@pytest.fixture(scope="module")
def rules_doc(shared_data: Path) -> dict:
    return build_rules(shared_data / "gitleaks" / "gitleaks.toml")


@pytest.fixture(scope="module")
def det(rules_doc: dict) -> Detectors:
    d = Detectors(rules_doc)
    assert d.patterns.active and d.info()["prefilter"] == "hyperscan"
    return d


def _sampled_texts(rules_doc: dict, det: Detectors) -> list[str]:
    """Texts holding samples of every rule's regex and of every personal-data/view pattern."""
    from classifier.data.secrets_gen import RegexSampler

    rng = np.random.default_rng(0)
    sources = [r["regex"] for r in rules_doc["credential"]["rules"]]
    sources += [p.pattern for p in {**D._VIEW_PATTERNS, **D._PII_PATTERNS}.values()]
    texts: list[str] = []
    for src in sources:
        try:
            sampler = RegexSampler(src)
        except Exception:  # noqa: BLE001 - a pattern the sampler cannot walk is covered by the real texts
            continue
        for k in range(2):
            s = sampler.sample_valid(rng, tries=10)
            if s is not None:
                texts.append(CONTEXTS[(len(texts) + k) % len(CONTEXTS)].format(s.text))
    return texts


@pytest.mark.slow
def test_prefilter_names_every_pattern_that_matches(det: Detectors, rules_doc: dict, shared_data: Path) -> None:
    """The superset, pattern by pattern: wherever Python's regex finds a match, the prefilter
    names it (or declines to vouch), on samples of every pattern in ASCII and non-ASCII contexts
    and on real prompts."""
    patterns = {**D._VIEW_PATTERNS, **D._PII_PATTERNS, **{"rule:" + r.id: r.pattern for r in det.rules}}
    texts = _sampled_texts(rules_doc, det)
    texts += [json.loads(line)["text"] for line in (DATA / "obfuscation.jsonl").read_text("utf-8").split("\n") if line]
    texts += [json.loads(line)["prompt"] for line in
              (shared_data / "arena-hard" / "data" / "arena-hard-v2.0" / "question.jsonl").read_text("utf-8").split("\n")[:300] if line]
    checked, vouched_non_ascii = 0, 0
    for text in texts:
        base = D.canonical(text).text  # what the detectors scan
        maybe = det.patterns.possible(base)
        if maybe is None:
            continue
        for name, p in patterns.items():
            if p.search(base) is not None:
                checked += 1
                assert name in maybe, (name, base[:200])
                vouched_non_ascii += not base.isascii() and name.startswith("rule:") and name not in det.patterns._unicode
    assert checked > 500 and vouched_non_ascii > 50


@pytest.mark.slow
def test_hits_are_the_same_with_and_without_the_prefilter(det: Detectors, rules_doc: dict, shared_data: Path) -> None:
    reference = Detectors(rules_doc, prefilter=False)
    assert not reference.patterns.active and reference.info()["prefilter"] is None
    texts = _sampled_texts(rules_doc, det)
    texts += [json.loads(line)["text"] for line in (DATA / "obfuscation.jsonl").read_text("utf-8").split("\n") if line]
    texts += [json.loads(line)["prompt"] for line in
              (shared_data / "arena-hard" / "data" / "arena-hard-v2.0" / "question.jsonl").read_text("utf-8").split("\n") if line]
    found = 0
    for text in texts:
        got = det.scan(text)
        assert got == reference.scan(text), text[:200]
        found += bool(got)
    assert found > 200  # the comparison covers real hits, not only empty lists


def test_prefilter_skips_what_cannot_match_and_declines_what_it_cannot_vouch_for() -> None:
    pf = RegexPrefilter({"key": re.compile(r"(?i)\bAKIA[A-Z0-9]{16}\b", re.ASCII),
                         "digits": re.compile(r"(?<!\d)\d{9}(?!\d)"),
                         "line-end": re.compile(r"ok$", re.ASCII)})
    assert pf.active
    assert pf.possible("nothing to see") == frozenset()
    assert pf.possible("akiaabcdefghijklmnop and 123456789") == {"key", "digits"}
    assert "line-end" in pf.possible("it is ok\n")  # Python's $ also matches before a final newline
    # non-ASCII text: both are still vouched for (0x80 and stand-ins, see the module)
    assert pf.possible("café ¹²³") == frozenset()  # superscripts are not \d to Python
    assert pf.possible("café AKIAABCDEFGHIJKLMNOP") == {"key"}
    assert pf.possible("“quoted” — 12345 ✓ 🚀") == frozenset()
    assert pf.possible("“quoted” — 123456789 ✓") == {"digits"}
    assert pf.possible("٣٤٥٦٧٨٩١٢ “x”") == {"digits"}  # Arabic-Indic digits are \d to Python
    assert pf.possible("café 東京 12") == frozenset()


def test_stand_ins_pass_every_test_their_character_passes() -> None:
    pf = RegexPrefilter({"word": re.compile(r"\b[a-z]+\b"), "ci": re.compile(r"(?i)five\s+\d"),
                         "neg": re.compile(r"x[^\n\d]y")})
    assert pf._stand_in("’") == "\x80"  # punctuation: in the negated class only, like 0x80
    assert re.fullmatch(r"\w", pf._stand_in("é")) and not re.fullmatch(r"\d", pf._stand_in("é"))
    assert pf._stand_in("٣") == "0"
    assert pf._stand_in("\u00a0") in " \t"  # a no-break space is \s to Python
    assert pf._stand_in("ı").lower() == "i"  # dotless i matches (?i)i in Python
    for c in "é’٣\u00a0ı東":
        s = pf._stand_in(c)
        assert all(t.fullmatch(s) for t in pf._tests if t.fullmatch(c)), c
    assert "ci" in pf.possible("fıve ٣")  # matches in Python; found through the stand-ins
    assert pf.possible("x\x1fy") is None  # a control character: not vouched for
    off = RegexPrefilter({"key": re.compile("a")}, enabled=False)
    assert not off.active and off.possible("a") is None


def test_a_pattern_naming_a_non_ascii_character_is_vouched_for_on_ascii_text_only() -> None:
    pf = RegexPrefilter({"quote": re.compile("[’']s", re.ASCII), "esc": re.compile(r"\xe9t", re.ASCII)})
    assert pf.possible("its") == frozenset()
    assert pf.possible("it’s") == {"quote", "esc"}  # reported as possible, whatever the scan says


def test_a_pattern_hyperscan_refuses_is_always_possible() -> None:
    pf = RegexPrefilter({"u-escape": re.compile(r"\u00e9t", re.ASCII), "plain": re.compile("abc")})
    assert pf.active
    assert pf.possible("nothing") == {"u-escape"}


def test_compiled_rules_are_kept_on_disk_checked_and_reloaded(tmp_path, monkeypatch) -> None:
    from classifier.serving import prefilter as P

    monkeypatch.setenv("TIERWISE_CACHE_DIR", str(tmp_path))
    patterns = {"key": re.compile(r"\bAKIA[A-Z0-9]{16}\b", re.ASCII), "digits": re.compile(r"\d{9}")}
    texts = ["AKIAABCDEFGHIJKLMNOP", "call 123456789", "nothing", "café 123456789"]
    P._database.cache_clear()
    first = RegexPrefilter(patterns)
    files = list((tmp_path / "hyperscan").glob("*.db"))
    assert len(files) == 1
    want = [first.possible(t) for t in texts]
    assert want[0] == {"key"} and want[1] == {"digits"} and want[2] == frozenset()

    # the next process loads it: compiling is not even possible here
    P._database.cache_clear()
    real_compile = P._compile
    monkeypatch.setattr(P, "_compile", lambda *a: (_ for _ in ()).throw(AssertionError("compiled again")))
    assert [RegexPrefilter(patterns).possible(t) for t in texts] == want

    # a damaged file is not trusted: the rules are compiled again and the file rewritten
    data = bytearray(files[0].read_bytes())
    data[-10] ^= 0xFF
    files[0].write_bytes(bytes(data))
    P._database.cache_clear()
    monkeypatch.setattr(P, "_compile", real_compile)
    assert [RegexPrefilter(patterns).possible(t) for t in texts] == want
    P._database.cache_clear()
    assert P._load(__import__("hyperscan"), files[0]) is not None  # rewritten whole

    # off, or a directory that cannot be written: no file, same answers
    P._database.cache_clear()
    monkeypatch.setenv("TIERWISE_CACHE_DIR", "off")
    assert [RegexPrefilter(patterns).possible(t) for t in texts] == want
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("TIERWISE_CACHE_DIR", str(blocked))
    P._database.cache_clear()
    assert [RegexPrefilter(patterns).possible(t) for t in texts] == want
    P._database.cache_clear()
