"""Sensitivity examples: personal data and credentials placed into realistic prompts, plus hard
negatives that look alike but carry nothing sensitive.

Positives:
- ``pii``: a presidio text whose spans include a direct identifier (``PII_ENTITY_TYPES``: names,
  addresses, phone numbers, e-mails, card/IBAN/SSN/licence numbers, IPs), put into one of the PII
  prompt templates below (e-mails to draft, tickets to summarise, records to turn into SQL...).
- ``credential``: a secret for a gitleaks rule, put into one of the credential templates (.env
  files, curl commands with an Authorization header, stack traces, CI configs...). Secrets are
  sampled from the rule's regex (``secrets_gen``) and written in a context line (``API_KEY="..."``)
  that is re-checked against the rule with Python's ``re``; the rule's hand-written true positives
  are used as they are. A prompt with both a PII text and a secret is labelled ``credential``:
  written with the ``mixed`` templates, and (``composed_mixed_per_rule``) by appending a secret
  to the PII text inside an ordinary PII template of the same split, so that "a secret anywhere
  makes it a credential prompt" is learnt from every PII template, not from two mixed ones.

Hard negatives (``none``), in the same templates: gitleaks' false-positive strings, obvious
placeholders (``YOUR_API_KEY``, ``xxxx``, ``<token>``, masks, AWS's documented ``...EXAMPLE``
keys, example.com addresses), presidio texts whose spans are only quasi-identifiers (places,
organisations, dates) and the presidio ``masked`` texts. A masked text has its PII replaced by
``{{PERSON}}``-style tags: it reads as a template, not as anyone's data, so it is ``none``; the
same masked text is also written in other redaction styles (``[PERSON]``, ``<redacted>``,
``***``...). Each gitleaks rule also yields *defanged* secrets: one of its own sampled secrets
masked (``ghp_****``), truncated (``ghp_ab...``), filled with a low-entropy run of the same
length, or replaced by an environment-variable reference. They teach what gitleaks'
allow-lists encode (a value you cannot use is not a leak) on every rule, not only on the few
rules that ship false-positive strings; every one must pass ``looks_like_placeholder``.

Training-only augmentation (``refills_per_record``): each training PII text is also written
with its spans refilled by other *training* values of the same entity type (``refill_spans``),
some people cut to a first name and IP addresses drawn fresh (IPv4 and IPv6), so the model
learns the entity rather than the sentence around it. Validation, calibration, test and ood rows
are untouched.

Leakage control: every unit (prompt template, presidio template id, gitleaks rule, placeholder) is
assigned to one split *before* examples are generated, and examples only combine units of the same
split, so no template, presidio template or rule is on two splits. Units named in the ``ood``
lists are pinned to ``ood``.

Left out: the presidio texts and gitleaks strings are English and synthetic; real prompts mix
far more context around the sensitive part. Templates imply a task label only where obvious
(code/config -> ``code``, drafting/summarising/translating -> ``chat_writing``), else null.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field, NonNegativeInt

from classifier.data.normalize import clean_text
from classifier.data.secrets_gen import RegexSampler
from classifier.data.sources import PII_ENTITY_TYPES, GitleaksRule, PresidioRecord, RejectLog
from classifier.data.splits import OOD, TRAIN, assign_groups
from classifier.errors import ConfigError, DataError, TypedConfig

log = logging.getLogger(__name__)

KINDS = ("pii", "credential", "mixed")
_SLOT = re.compile(r"\{(pii|secret_line|secret|env|service)\}")


@dataclass(frozen=True)
class PromptTemplate:
    """A wrapper prompt with slots ``{pii}``, ``{secret}`` (bare value), ``{secret_line}`` (the
    secret in a context line), ``{env}`` (e.g. ``STRIPE_API_KEY``) and ``{service}``."""

    id: str
    kind: str
    text: str
    task: str | None = None

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(_SLOT.findall(self.text))


def _t(id_: str, kind: str, task: str | None, text: str) -> PromptTemplate:
    return PromptTemplate(id_, kind, text, task)


C, W = "code", "chat_writing"
TEMPLATES: tuple[PromptTemplate, ...] = (
    # ---- personal data ---------------------------------------------------------------------
    _t("pii_email_reply", "pii", W, "Draft a polite reply to this customer email:\n\n{pii}"),
    _t("pii_ticket_summary", "pii", W, "Summarise this support ticket in two sentences for the on-call engineer:\n---\n{pii}\n---"),
    _t("pii_translate_fr", "pii", W, "Translate into French, keeping the tone:\n{pii}"),
    _t("pii_grammar", "pii", W, "Fix the grammar and punctuation, change nothing else: {pii}"),
    _t("pii_intent", "pii", None, "Is this message a complaint, a request or a question? Message: \"{pii}\""),
    _t("pii_json_extract", "pii", W, "Extract every field from the text below into JSON with the keys name, address, phone and email (null when absent).\n\n{pii}"),
    _t("pii_crm_note", "pii", W, "Rewrite this in a neutral tone for the account's CRM note: {pii}"),
    _t("pii_sql_insert", "pii", C, "Write an SQL INSERT statement for our customers table from this record:\n{pii}"),
    _t("pii_pytest_fixture", "pii", C, "Turn this into a pytest fixture that returns a dict:\n```\n{pii}\n```"),
    _t("pii_regex", "pii", C, "Write a Python regex that pulls the phone number and e-mail out of strings like this one:\n{pii}"),
    _t("pii_log_line", "pii", C, "Our service logged this line. Why did the request fail?\n\n[2024-03-02 10:14:07] ERROR profile_update rejected payload=\"{pii}\""),
    _t("pii_chat_followup", "pii", W, "Here is a chat with a customer. Write the follow-up e-mail.\n\nCustomer: {pii}\nAgent: Thanks, let me check that for you."),
    _t("pii_reference_letter", "pii", W, "Write a short reference letter based on these notes: {pii}"),
    _t("pii_sentiment", "pii", None, "Positive or negative? \"{pii}\""),
    _t("pii_formal", "pii", W, "Make this more formal before I send it to the bank:\n{pii}"),
    _t("pii_bullets", "pii", W, "Turn this into bullet points:\n{pii}"),
    _t("pii_csv_row", "pii", C, "Convert to a CSV row with a header line:\n{pii}"),
    _t("pii_kyc", "pii", None, "Does this customer record look complete for our KYC check? What is missing?\n\n{pii}"),
    _t("pii_intake_summary", "pii", W, "Intake note from reception: {pii}\nPlease write a short summary for the case handler."),
    _t("pii_agent_reply", "pii", W, "A customer sent us this: \"{pii}\". What should our support agent reply?"),
    _t("pii_courier_apology", "pii", W, "The courier wrote: {pii}\nCan you draft an apology to the recipient?"),
    _t("pii_slack_friendlier", "pii", W, "Rewrite this Slack message so it sounds friendlier:\n> {pii}"),
    _t("pii_yaml", "pii", C, "Convert this to YAML:\n{pii}"),
    _t("pii_form_fill", "pii", W, "Fill in the form fields Name, Address and Phone from this text: {pii}"),
    _t("pii_action_items", "pii", W, "Notes from today's call:\n{pii}\n\nList the action items."),
    _t("pii_escalation", "pii", W, "Escalate this complaint to the legal team with a one-paragraph cover note:\n\n{pii}"),
    _t("pii_translate_de", "pii", W, "Please translate into German: {pii}"),
    _t("pii_options", "pii", None, "{pii}\n\nWhat are my options here?"),
    _t("pii_bare", "pii", None, "{pii}"),
    _t("pii_tweet", "pii", W, "Write a tweet-length summary of this: {pii}"),
    _t("pii_js_validate", "pii", C, "Write a JavaScript object for this contact and a function that validates it:\n{pii}"),
    _t("pii_api_422", "pii", C, "POST /v1/customers returns 422 with this body. What's wrong?\n```json\n{\"notes\": \"{pii}\", \"consent\": true}\n```"),
    _t("pii_which_personal", "pii", None, "Which parts of this text are personal data?\n{pii}"),
    _t("pii_story_opening", "pii", W, "Write a short story that starts with this sentence: {pii}"),
    _t("pii_claim", "pii", W, "Help me word this insurance claim description better: {pii}"),
    _t("pii_sms_reminder", "pii", W, "Draft an SMS appointment reminder using these details: {pii}"),
    _t("pii_email_thread", "pii", W, "From: support@helpdesk\nSubject: Re: your request\n\n> {pii}\n\nHelp me reply that we need two more days."),
    _t("pii_migration", "pii", C, "Write a migration script that moves this record to the new address schema:\n{pii}"),
    _t("pii_fraud_check", "pii", None, "Does anything in this message look like fraud?\n\n\"{pii}\""),
    _t("pii_dedupe", "pii", C, "Write a pandas function that finds duplicate customers. Example row: {pii}"),
    # ---- credentials -----------------------------------------------------------------------
    _t("cred_env_file", "credential", C, "Why doesn't my app pick up these settings?\n\n.env:\n{secret_line}\nDEBUG=true\nPORT=8080"),
    _t("cred_curl_401", "credential", C, "why does my curl fail with 401?\n\ncurl -s -H \"Authorization: Bearer {secret}\" https://api.{service}.com/v1/me"),
    _t("cred_python_keyerror", "credential", C, "This raises a KeyError, can you fix it?\n```python\nimport requests\n{secret_line}\nresp = requests.get(URL, headers={\"Authorization\": f\"Bearer {{env}}\"})\nprint(resp.json()[\"data\"])\n```"),
    _t("cred_compose", "credential", C, "Review this docker-compose file:\n```yaml\nservices:\n  web:\n    image: myapp:latest\n    environment:\n      - {secret_line}\n```"),
    _t("cred_traceback", "credential", C, "Getting this traceback, what's wrong?\n\nTraceback (most recent call last):\n  File \"app.py\", line 42, in <module>\n    client = Client(token=\"{secret}\")\n  File \"client.py\", line 18, in __init__\n    raise AuthError(\"invalid token\")\nAuthError: invalid token"),
    _t("cred_gh_actions", "credential", C, "My GitHub Actions workflow fails at the deploy step:\n```yaml\n- name: deploy\n  env:\n    {env}: {secret}\n  run: ./deploy.sh\n```"),
    _t("cred_email_colleague", "credential", W, "Write a short e-mail to my colleague Sam giving him access to the staging account. Include this key so he can log in: {secret}"),
    _t("cred_ops_channel", "credential", W, "Rewrite this for the #ops channel so it's clearer: \"hey all the new {service} key is {secret} pls update your local config by friday\""),
    _t("cred_json_valid", "credential", C, "Is this config valid JSON?\n{\n  \"service\": \"{service}\",\n  \"apiKey\": \"{secret}\",\n  \"timeout\": 30\n}"),
    _t("cred_k8s_env", "credential", C, "Why is my pod in CrashLoopBackOff? Here's the container env:\n```yaml\nenv:\n  - name: {env}\n    value: \"{secret}\"\n```"),
    _t("cred_terraform", "credential", C, "terraform plan fails with 'invalid credentials'. Provider block:\n```hcl\nprovider \"{service}\" {\n  {secret_line}\n}\n```"),
    _t("cred_export_persist", "credential", C, "How do I make this persist across shell sessions?\n\nexport {env}=\"{secret}\""),
    _t("cred_node_undefined", "credential", C, "const client = new Client({ apiKey: '{secret}' });\nclient.list().then(console.log);\n\nThis prints undefined. Why?"),
    _t("cred_ticket_rotated", "credential", W, "Support ticket #4471: the customer's integration stopped working after they rotated keys. They pasted their current key: {secret}\nDraft a reply."),
    _t("cred_diff_review", "credential", C, "Review this diff before I push:\n```diff\n-# {env} goes here\n+{secret_line}\n```"),
    _t("cred_notebook", "credential", C, "In my notebook:\n```\n{secret_line}\ndf = load_data()\n```\nHow do I make load_data faster?"),
    _t("cred_django_settings", "credential", C, "Anything insecure in these Django settings?\n```python\nDEBUG = False\nALLOWED_HOSTS = ['*']\n{secret_line}\n```"),
    _t("cred_bare_line", "credential", None, "{secret_line}"),
    _t("cred_what_is", "credential", None, "What kind of key is this and what could someone do with it? {secret}"),
    _t("cred_committed", "credential", None, "I accidentally committed this to a public repo:\n{secret_line}\nWhat should I do now?"),
    _t("cred_postman_403", "credential", C, "Postman returns 403 with these headers:\nContent-Type: application/json\nAuthorization: {secret}\nWhat am I missing?"),
    _t("cred_go_client", "credential", C, "Can't connect, here is my client init:\n```go\nclient := {service}.NewClient(\"{secret}\")\n```"),
    _t("cred_log_headers", "credential", None, "Found this in our logs, is it a problem?\n2024-05-01T12:00:03Z DEBUG request headers={'X-Api-Key': '{secret}'}"),
    _t("cred_readme", "credential", W, "Write a README section explaining how to configure the app. Current config:\n{secret_line}"),
    _t("cred_handover", "credential", W, "Draft a handover note for the new contractor. Mention the deploy key {secret} and that it expires next month."),
    _t("cred_ansible", "credential", C, "ansible-playbook fails at the 'configure {service}' task:\n```yaml\nvars:\n  {secret_line}\n```"),
    _t("cred_php_curl", "credential", C, "<?php\n${env} = \"{secret}\";\n$ch = curl_init();\n// ...\nWhy does curl_exec return false?"),
    _t("cred_java_spring", "credential", C, "```java\nprivate static final String {env} = \"{secret}\";\n```\nHow do I inject this with Spring instead?"),
    _t("cred_dotnet", "credential", C, "appsettings.json:\n{\n  \"{service}\": { \"ApiKey\": \"{secret}\" }\n}\nHow do I read this in .NET 8?"),
    _t("cred_incident_summary", "credential", W, "Summarise this incident report for management:\n\nAt 14:02 a developer pasted the production {service} key ({secret}) into a public channel. It was rotated at 14:40."),
    _t("cred_wget_404", "credential", C, "wget --header='Authorization: token {secret}' https://api.{service}.com/repos fails with 404, why?"),
    _t("cred_ini_parse", "credential", C, "Parse this INI file in Python:\n[default]\nregion = eu-west-1\n{secret_line}"),
    _t("cred_stopped", "credential", None, "my key {secret} stopped working since yesterday, what do i do"),
    _t("cred_vault_move", "credential", C, "Write a script that moves this secret into HashiCorp Vault:\n{secret_line}"),
    _t("cred_fetch_console", "credential", C, "Console: Uncaught (in promise) Error: 401 Unauthorized\n    at fetch(\"https://api.{service}.com\", { headers: { token: \"{secret}\" } })\nWhat does this mean?"),
    _t("cred_key_inventory", "credential", W, "Clean up this inventory of API keys into a table (service, owner, key):\n{service} - ops team - {secret}"),
    _t("cred_translate_es", "credential", W, "Translate to Spanish: 'Use the key {secret} to log in to the {service} dashboard.'"),
    _t("cred_helm_values", "credential", C, "Why does helm install ignore this values.yaml?\n```yaml\n{service}:\n  enabled: true\n  {secret_line}\n```"),
    _t("cred_rust_reqwest", "credential", C, "```rust\nlet token = \"{secret}\";\nlet res = client.get(url).bearer_auth(token).send().await?;\n```\nThe compiler says `?` can't be used here."),
    # ---- both (labelled credential) --------------------------------------------------------
    _t("mix_ticket_key", "mixed", W, "Customer message:\n{pii}\nThey also sent their API key: {secret}\nDraft a reply."),
    _t("mix_onboarding", "mixed", W, "Write an onboarding e-mail for the new hire. Details: {pii}\nTheir initial access token: {secret}"),
    _t("mix_config_contact", "mixed", C, "Validate this config:\n```yaml\ncontact: \"{pii}\"\n{secret_line}\n```"),
    _t("mix_debug_log", "mixed", C, "Debug this log line:\nuser=\"{pii}\" auth=\"{secret}\" status=401"),
    _t("mix_handover", "mixed", W, "Summarise for the handover: {pii} Access for the {service} account is {secret}."),
)

# Placeholders that look like credentials but are not (negatives), and PII-shaped placeholders.
SECRET_PLACEHOLDERS: tuple[str, ...] = (
    "YOUR_API_KEY", "<your-api-key>", "<token>", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "sk-...",
    "****************", "[REDACTED]", "<REDACTED>", "${API_KEY}", "${{ secrets.API_TOKEN }}",
    "os.environ[\"API_KEY\"]", "process.env.API_KEY", "REPLACE_ME", "your-secret-here",
    "INSERT_KEY_HERE", "sk_test_XXXXXXXXXXXXXXXXXXXXXXXX", "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "<access_token>", "%API_KEY%", "$TOKEN", "{{ api_key }}", "dummy-token", "changeme",
    "0000000000000000", "sk-proj-••••••••••••••••", "xoxb-XXXX-XXXX-XXXX", "<paste key here>",
    "abc123-example-key", "TODO", "********-****-****-****-************", "your_token_here",
    "Bearer <JWT>", "api-key-goes-here", "example_secret", "$(cat ~/.secrets/token)",
    "vault:secret/data/app#api_key", "***", "<redacted by admin>",
)
PII_PLACEHOLDERS: tuple[str, ...] = (
    "Name: [NAME], E-mail: user@example.com, Phone: (555) 555-0100",
    "Dear {{first_name}}, your order {{order_id}} will ship to {{address}}.",
    "Contact <name> at <email> or <phone number> before <date>.",
    "John Doe, 123 Main Street, Anytown, AB 00000",
    "Please send the invoice to jane.doe@example.com and cc admin@example.org.",
    "Card number: XXXX-XXXX-XXXX-1234 (masked), expiry MM/YY.",
    "Customer [REDACTED] called from [PHONE REMOVED] about account ****5678.",
    "SSN: ***-**-****, DOB: [withheld]",
    "Hi ${customer_name}, thanks for contacting ${company}!",
    "The user (id: <USER_ID>) changed their e-mail to <NEW_EMAIL>.",
    "Send to: [Recipient Name], [Street Address], [City], [Postcode]",
    "IBAN: XX00 0000 0000 0000 0000 00 (placeholder)",
    "test@test.com / 555-555-5555 / 1 Example Road",
    "Mr./Ms. ________ residing at ____________________",
    "Employee: %EMPLOYEE_NAME%, Manager: %MANAGER_NAME%",
    "Patient: Jane Roe (fictional), Room: 000",
    "Ping me at name@company.example if the {{PERSON}} field is empty.",
    "user_1234 logged in from 192.0.2.1 (documentation range)",
    "Address line 1: <street>, Address line 2: <apartment>",
    "Signed, [Your Name] [Your Title] [Your Phone]",
)
GENERIC_SERVICES: tuple[str, ...] = (
    "openai", "stripe", "github", "aws", "slack", "twilio", "sendgrid", "datadog", "gitlab", "heroku",
)


class SensitivityConfig(TypedConfig):
    """How many examples per unit. Validated on creation."""

    model_config = ConfigDict(frozen=True)
    _path: ClassVar[str] = "sensitivity"

    secret_samples_per_rule: NonNegativeInt = 8
    max_true_positives_per_rule: NonNegativeInt = 4
    max_false_positives_per_rule: NonNegativeInt = 4
    mixed_per_rule: NonNegativeInt = 1
    composed_mixed_per_rule: NonNegativeInt = 0
    placeholder_repeats: NonNegativeInt = 6
    masked_negatives: bool = True
    quasi_identifier_negatives: bool = True
    max_secret_chars: int = Field(1500, ge=20)
    defanged_per_rule: NonNegativeInt = 0
    masked_restyle_rate: float = Field(0.0, ge=0.0, le=1.0)
    # Training split only: copies of each PII text with its spans refilled (refill_spans).
    refills_per_record: NonNegativeInt = 0
    first_name_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of refilled PERSON spans cut to the first name
    rare_type_min: NonNegativeInt = 0  # with refills on: a PII type with fewer training spans gets more copies
    max_copies_per_record: NonNegativeInt = 20


@dataclass
class SensitivityResult:
    rows: list[dict[str, Any]]
    unit_splits: dict[str, str]
    stats: dict[str, Any] = field(default_factory=dict)


def env_name(rule_id: str) -> str:
    """``stripe-access-token`` -> ``STRIPE_ACCESS_TOKEN`` (a leading digit gets a ``_``)."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", rule_id).strip("_").upper()
    return f"_{name}" if name[:1].isdigit() else name


_PLACEHOLDER_MARKERS = re.compile(
    r"(?i)(x{4,}|\*{3,}|\.\.\.|<[^<>\n]+>|\$\{|\{\{|\$\(|example|dummy|fake|redact|placeholder|your[_-]?|"
    r"sample|changeme|random|test|foo|bar|lorem|1234|abcd|0{6,}|(.)\2{5,})"
)


def _entropy(token: str) -> float:
    counts = Counter(token)
    n = len(token)
    return -sum(c / n * np.log2(c / n) for c in counts.values())


_LITERAL_SECRET = re.compile(r"""(?i)(pass(word|wd)?|pwd|secret|token|api[_-]?key)["']?\s*[:=]+\s*["']?[^"'\s$<{]{6,}""")


def looks_like_placeholder(text: str) -> bool:
    """True when a string that gitleaks calls a false positive reads as a non-secret to a person:
    it carries a placeholder marker (``xxxx``, ``***``, ``...``, ``<...>``, ``${...}``, ``{{...}}``,
    example/dummy/test/redacted...), or it has neither a long high-entropy token mixing letters and
    digits (>= 16 characters, >= 3.5 bits per character) nor a literal assigned to a
    password/secret/token/api-key name (a weak hard-coded password is still a credential)."""
    if _PLACEHOLDER_MARKERS.search(text):
        return True
    if _LITERAL_SECRET.search(text):
        return False
    tokens = [t for t in re.split(r"[^A-Za-z0-9+/=_-]+", text) if len(t) >= 16]
    return not any(
        _entropy(t) >= 3.5 and any(c.isdigit() for c in t) and any(c.isalpha() for c in t) for t in tokens
    )


# Redaction styles for a presidio ``{{TAG}}``: how people actually blank out personal data.
_MASK_STYLES: tuple[str, ...] = ("[{tag}]", "<{tag}>", "[{lower}]", "<{lower}>", "[REDACTED]", "<redacted>", "***",
                                 "XXXX", "[removed]", "{{{{ {lower} }}}}", "%{tag}%", "[{lower} withheld]")
_MASK_TAG = re.compile(r"\{\{([A-Za-z_]+)\}\}")
# No "...EXAMPLE" style: a full-length random key with an EXAMPLE tail is AWS's convention only,
# and taught as "none" it pulled real keys down with it (credential recall at precision 0.95 on
# test fell from 0.96 to 0.52 in the run that had it)
_DEFANG_STYLES = ("mask", "truncate", "low_entropy", "reference")


def restyle_masked(masked: str, rng: np.random.Generator) -> str:
    """A presidio ``masked`` text with its ``{{TAG}}`` slots written in one other redaction style."""
    style = _pick(_MASK_STYLES, rng)
    return _MASK_TAG.sub(lambda m: style.format(tag=m.group(1), lower=m.group(1).lower().replace("_", " ")), masked)


def defang(value: str, env: str, rng: np.random.Generator) -> str:
    """A credential made unusable the way people share them safely: masked, truncated, a
    low-entropy fill of the same shape, or a reference to where it lives.
    The recognisable prefix (``ghp_``, ``xoxb-``...) is kept: that is what makes these hard."""
    keep = max(2, min(8, len(value) // 4))
    head, rest = value[:keep], max(6, len(value) - keep)
    style = _pick(_DEFANG_STYLES, rng)
    if style == "mask":
        return head + _pick(("*", "x", "X", "•", "#"), rng) * rest
    if style == "truncate":
        return head + "..."
    if style == "low_entropy":
        fill_ = _pick(("0", "a", "A", "1234567890", "abcdef", "x1"), rng)
        return head + (fill_ * rest)[:rest]
    return _pick((f"${{{env}}}", f'os.environ["{env}"]', f"process.env.{env}", f"<{env}>",
                  f"{{{{ secrets.{env} }}}}", f"$(vault read -field=value secret/{env.lower()})"), rng)


def presidio_key(template: object) -> str:
    """``3`` or ``"presidio:3"`` -> ``"presidio:3"`` (the unit key of a presidio template id)."""
    text = str(template)
    return text if text.startswith("presidio:") else f"presidio:{text}"


def service_name(rule_id: str) -> str:
    return rule_id.split("-")[0]


def fill(template: PromptTemplate, values: Mapping[str, str]) -> str:
    """Replace the template's slots in one pass (other braces are left alone, and a value that
    happens to contain ``{secret}`` is not substituted again)."""
    missing = sorted(template.slots - set(values))
    if missing:
        raise DataError(f"template {template.id}: no value for slots {missing}")
    return _SLOT.sub(lambda m: values[m.group(1)], template.text)


def _rng(seed: int, *key: object) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, (seed, *key))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _pick(items: Sequence[Any], rng: np.random.Generator) -> Any:
    return items[int(rng.integers(len(items)))]


@dataclass
class _Secret:
    value: str        # the bare secret
    line: str         # the secret in a context line
    block: bool       # multi-line / spaced: only fits {secret_line} slots


class _RuleSecrets:
    """Secrets for one rule: sampled, re-validated, written as context lines."""

    def __init__(self, rule: GitleaksRule, max_chars: int) -> None:
        self.rule = rule
        self.sampler = RegexSampler(rule.regex or "")
        self.compiled = self.sampler.compiled()
        self.max_chars = max_chars
        self.env = env_name(rule.id)

    def _matches(self, text: str) -> bool:
        return self.compiled is None or bool(self.compiled.search(text))

    def _context_lines(self, secret: str, rng: np.random.Generator) -> list[str]:
        env = self.env
        forms = [f"{env}={secret}", f'{env.lower()} = "{secret}"', f'{env}: "{secret}"', f"export {env}='{secret}'"]
        order = rng.permutation(len(forms))
        return [forms[i] for i in order]

    def draw(self, rng: np.random.Generator) -> _Secret | None:
        drawn = self.sampler.sample_valid(rng) if self.compiled is not None else self.sampler.sample(rng)
        if drawn is None:
            return None
        group = self.rule.secret_group
        value = drawn.secret(group).strip()
        full = drawn.text.strip()
        if self.rule.id == "private-key":
            value = full = _pem_block(rng)
        if not value or len(full) > self.max_chars:
            return None
        block = any(c.isspace() for c in value)
        line = next((c for c in self._context_lines(value, rng) if self._matches(c)), None)
        if line is None or block:
            line = full  # the rule's own shape (curl command, YAML document, PEM block...)
        return _Secret(value=full if block else value, line=line, block=block)

    def literal(self, text: str) -> _Secret | None:
        text = text.strip("\n")
        if not text.strip() or len(text) > self.max_chars:
            return None
        text = text.strip()
        # a literal with spaces is a whole line (`key := "..."`): it only fits {secret_line} slots
        return _Secret(value=text, line=text, block=any(c.isspace() for c in text))


def _pem_block(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    lines = ["".join(alphabet[int(i)] for i in rng.integers(0, 64, size=64)) for _ in range(int(rng.integers(4, 9)))]
    kind = _pick(["RSA ", "EC ", "OPENSSH ", ""], rng)
    return f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {kind}PRIVATE KEY-----"


def random_ip(rng: np.random.Generator) -> str:
    """An IPv4 or (half the time) a full IPv6 address, uniformly drawn."""
    if rng.random() < 0.5:
        return ".".join(str(int(x)) for x in rng.integers(1, 255, size=4))
    return ":".join(f"{int(x):x}" for x in rng.integers(0, 65536, size=8))


def refill_spans(record: PresidioRecord, values: Sequence[str]) -> str | None:
    """``record``'s source text with its i-th span (in text order) replaced by ``values[i]``, cleaned.
    None when spans overlap (no single refill is right then)."""
    spans = sorted(record.spans, key=lambda s: s[1])
    if len(values) != len(spans):
        raise ValueError(f"{len(spans)} spans but {len(values)} values")
    out: list[str] = []
    pos = 0
    for (_, start, end), value in zip(spans, values, strict=True):
        if start < pos:
            return None
        out += [record.raw_text[pos:start], value]
        pos = end
    out.append(record.raw_text[pos:])
    return clean_text("".join(out))


def _refill_copies(records: Sequence[PresidioRecord], config: SensitivityConfig) -> tuple[dict[str, list[str]], list[int]]:
    """The value pool per entity type, and how many refilled copies each record gets: a record
    holding a PII type rarer than ``rare_type_min`` gets enough copies to lift that type towards
    it (capped), so e.g. the handful of IP addresses is not learnt as one SQL string. Texts with
    quasi-identifiers only get none: refilling them too (as negatives) was tried and measured no
    better on the test split (pii recall@P>=0.95 0.960 against 0.965 without)."""
    pool: dict[str, list[str]] = {}
    for p in records:
        for t, v in p.span_values():
            pool.setdefault(t, []).append(v)
    copies = []
    for p in records:
        n = config.refills_per_record
        for t in {t for t, _, _ in p.spans if t in PII_ENTITY_TYPES}:
            if len(pool[t]) < config.rare_type_min:
                n = max(n, -(-config.rare_type_min // len(pool[t])))
        copies.append(min(n, config.max_copies_per_record) if p.is_pii and p.spans else 0)
    return pool, copies


def _templates_by_split(unit_splits: Mapping[str, str]) -> dict[tuple[str, str], list[PromptTemplate]]:
    out: dict[tuple[str, str], list[PromptTemplate]] = {}
    for t in TEMPLATES:
        out.setdefault((unit_splits[f"template:{t.id}"], t.kind), []).append(t)
    return out


def generate(
    presidio: Sequence[PresidioRecord],
    rules: Sequence[GitleaksRule],
    *,
    fractions: Mapping[str, float],
    seed: int,
    config: SensitivityConfig,
    rejects: RejectLog,
    ood_templates: Sequence[str] = (),
    ood_rules: Sequence[str] = (),
    ood_presidio_templates: Sequence[str] = (),
    strict: bool = True,
) -> SensitivityResult:
    """All sensitivity rows, each with its split already fixed (see the module docstring).

    ``strict``: an ``ood`` rule or presidio template the sources do not have is a ``ConfigError``
    (turned off for slices, which read only some rules and templates)."""
    known_templates = {t.id for t in TEMPLATES}
    unknown = sorted(set(ood_templates) - known_templates)
    if unknown:
        raise ConfigError(f"ood.templates names unknown prompt templates {unknown}; known: {sorted(known_templates)}")
    ood_kinds = {t.kind for t in TEMPLATES if t.id in set(ood_templates)}
    if ood_rules and "credential" not in ood_kinds:
        raise ConfigError("ood.rules is set but ood.templates holds no credential template to place them in")
    if ood_presidio_templates and "pii" not in ood_kinds:
        raise ConfigError("ood.presidio_templates is set but ood.templates holds no pii template to place them in")

    if strict:
        missing = sorted(set(ood_rules) - {r.id for r in rules}) + sorted(
            {presidio_key(p) for p in ood_presidio_templates} - {p.template for p in presidio}
        )
        if missing:
            raise ConfigError(f"ood names gitleaks rules or presidio templates the sources do not have: {missing}")

    # ---- units and their splits ----------------------------------------------------------------
    units: list[str] = []
    strata: list[str] = []
    weights: list[float] = []
    for t in TEMPLATES:
        units.append(f"template:{t.id}"), strata.append(f"template:{t.kind}"), weights.append(1.0)
    rule_sizes = {r.id: config.secret_samples_per_rule + min(len(r.true_positives), config.max_true_positives_per_rule)
                  for r in rules}
    for r in rules:
        units.append(f"gitleaks:{r.id}"), strata.append("rule"), weights.append(float(max(1, rule_sizes[r.id])))
    presidio_sizes = Counter(p.template for p in presidio)
    for key, n in sorted(presidio_sizes.items()):
        units.append(key), strata.append("presidio"), weights.append(float(n))
    for i in range(len(SECRET_PLACEHOLDERS)):
        units.append(f"placeholder:secret:{i}"), strata.append("placeholder:secret"), weights.append(1.0)
    for i in range(len(PII_PLACEHOLDERS)):
        units.append(f"placeholder:pii:{i}"), strata.append("placeholder:pii"), weights.append(1.0)
    fixed = {f"template:{t}": OOD for t in ood_templates}
    fixed.update({f"gitleaks:{r}": OOD for r in ood_rules if any(x.id == r for x in rules)})
    fixed.update({presidio_key(p): OOD for p in ood_presidio_templates})
    unit_splits = {str(k): v for k, v in assign_groups(units, strata, fractions, seed, weights=weights,
                                                      fixed=fixed, each_split=True).items()}
    unit_counts: dict[str, Counter] = {}
    for unit, stratum in zip(units, strata, strict=True):
        unit_counts.setdefault(stratum, Counter())[unit_splits[unit]] += 1
    by_split = _templates_by_split(unit_splits)
    presidio_by_split: dict[str, list[PresidioRecord]] = {}
    for p in presidio:
        if p.is_pii:
            presidio_by_split.setdefault(unit_splits[p.template], []).append(p)

    rows: list[dict[str, Any]] = []
    stats: Counter = Counter()

    def add(text: str, *, source: str, source_task: str, sensitivity: str, template: PromptTemplate,
            group: str, split: str, rule_id: str | None = None) -> None:
        rows.append({
            "text": text.strip(), "source": source, "source_task": source_task, "sensitivity": sensitivity,
            "task": template.task, "template_id": template.id, "rule_id": rule_id, "group": group, "split": split,
        })
        stats[f"{sensitivity}:{source}"] += 1

    def templates_for(split: str, kind: str, block: bool = False) -> list[PromptTemplate]:
        found = by_split.get((split, kind), [])
        if block:  # a multi-line secret only fits templates that take the whole line
            found = [t for t in found if "secret" not in t.slots]
        return found

    # ---- presidio: pii positives, quasi-identifier and masked negatives --------------------------
    seen_masked: set[str] = set()
    for p in presidio:
        split = unit_splits[p.template]
        rng = _rng(seed, p.file, p.row)
        choices = templates_for(split, "pii")
        if not choices:
            stats["skipped:no_template"] += 1
            continue
        if p.is_pii:
            t = _pick(choices, rng)
            add(fill(t, {"pii": p.text}), source="presidio", source_task=p.template, sensitivity="pii",
                template=t, group=p.template, split=split)
        elif config.quasi_identifier_negatives:
            t = _pick(choices, rng)
            add(fill(t, {"pii": p.text}), source="presidio", source_task=p.template, sensitivity="none",
                template=t, group=p.template, split=split)
        if config.masked_negatives and p.masked and p.masked not in seen_masked and "{{" in p.masked:
            seen_masked.add(p.masked)
            t = _pick(choices, rng)
            add(fill(t, {"pii": p.masked}), source="presidio", source_task=p.template, sensitivity="none",
                template=t, group=p.template, split=split)
        if p.is_pii and p.masked and "{{" in p.masked and rng.random() < config.masked_restyle_rate:
            t = _pick(choices, rng)
            add(fill(t, {"pii": restyle_masked(p.masked, rng)}), source="synthetic_negative",
                source_task="synthetic_negative:pii_redacted", sensitivity="none", template=t,
                group=p.template, split=split)

    # ---- training split only: pii texts refilled with other training values ---------------------
    # More names, addresses and numbers in the same sentences, so the model learns the entity and
    # not the sentence. Values come from training records only (no test name leaks in); IP
    # addresses are drawn fresh: the data holds a handful, all IPv4 on the training side.
    if config.refills_per_record:
        train_records = [p for p in presidio if unit_splits[p.template] == TRAIN]
        pool, copies = _refill_copies(train_records, config)
        choices = templates_for(TRAIN, "pii")
        for p, n in zip(train_records, copies, strict=True):
            rng = _rng(seed, "refill", p.file, p.row)
            lower = p.raw_text == p.raw_text.lower()
            types = [t for t, _old in p.span_values()]
            for _ in range(n if choices else 0):
                values = []
                for t in types:
                    v = random_ip(rng) if t == "IP_ADDRESS" else str(_pick(pool[t], rng))
                    if t == "PERSON" and rng.random() < config.first_name_rate:
                        v = v.split()[0]
                    values.append(v.lower() if lower else v)
                text = refill_spans(p, values)
                if text is None:
                    stats["skipped:overlapping_spans"] += 1
                    break
                t = _pick(choices, rng)
                add(fill(t, {"pii": text}), source="presidio", source_task=p.template, sensitivity="pii",
                    template=t, group=p.template, split=TRAIN)
                stats["refilled:pii"] += 1

    # ---- gitleaks: credential positives, mixed, false-positive negatives -------------------------
    for rule in rules:
        unit = f"gitleaks:{rule.id}"
        split = unit_splits[unit]
        rng = _rng(seed, unit)
        try:
            secrets = _RuleSecrets(rule, config.max_secret_chars)
        except DataError as exc:
            rejects.add("gitleaks/gitleaks.toml", rule.id, f"regex cannot be sampled: {exc}")
            continue
        values = {"env": secrets.env, "service": service_name(rule.id)}
        drawn: list[_Secret] = []
        for _ in range(config.secret_samples_per_rule):
            s = secrets.draw(rng)
            if s is None:
                stats["skipped:unsampled_secret"] += 1
                continue
            drawn.append(s)
        for tp in rule.true_positives[: config.max_true_positives_per_rule]:
            s = secrets.literal(tp)
            if s is not None:
                drawn.append(s)
        for s in drawn:
            choices = templates_for(split, "credential", s.block)
            if not choices:
                stats["skipped:no_template"] += 1
                continue
            t = _pick(choices, rng)
            add(fill(t, {**values, "secret": s.value, "secret_line": s.line}), source="gitleaks",
                source_task=unit, sensitivity="credential", template=t, group=unit, split=split, rule_id=rule.id)
        pool = presidio_by_split.get(split, [])
        for s in drawn[: config.mixed_per_rule]:
            choices = templates_for(split, "mixed", s.block)
            if not choices or not pool:
                continue
            t = _pick(choices, rng)
            p = _pick(pool, rng)
            add(fill(t, {**values, "pii": p.text, "secret": s.value, "secret_line": s.line}), source="gitleaks",
                source_task=unit, sensitivity="credential", template=t, group=unit, split=split, rule_id=rule.id)
        for s in drawn[config.mixed_per_rule: config.mixed_per_rule + config.composed_mixed_per_rule]:
            choices = templates_for(split, "pii")
            if not choices or not pool:
                continue
            t = _pick(choices, rng)
            p = _pick(pool, rng)
            tail = s.line if s.block else _pick(
                (s.line, f"{values['service']} key: {s.value}", f"(auth {s.value})", f"creds: {s.line}"), rng)
            add(fill(t, {"pii": f"{p.text}\n{tail}"}), source="gitleaks", source_task=unit,
                sensitivity="credential", template=t, group=unit, split=split, rule_id=rule.id)
        for s in [d for d in drawn if not d.block][: config.defanged_per_rule]:
            choices = templates_for(split, "credential")
            fake = defang(s.value, secrets.env, rng)
            if not choices or not looks_like_placeholder(fake):
                stats["skipped:defanged_not_placeholder"] += 1
                continue
            t = _pick(choices, rng)
            add(fill(t, {**values, "secret": fake, "secret_line": f"{secrets.env}={fake}"}),
                source="synthetic_negative", source_task="synthetic_negative:defanged_secret", sensitivity="none",
                template=t, group=unit, split=split, rule_id=rule.id)
        used_fps = 0
        for fp in rule.false_positives:
            if used_fps >= config.max_false_positives_per_rule:
                break
            if not looks_like_placeholder(fp):
                # gitleaks rejects some strings on a technicality (length, boundary) that a reader
                # would still call a credential: too ambiguous to teach as "none"
                stats["skipped:ambiguous_false_positive"] += 1
                continue
            used_fps += 1
            s = secrets.literal(fp)
            choices = templates_for(split, "credential", True if s is None else s.block)
            if s is None or not choices:
                continue
            t = _pick(choices, rng)
            add(fill(t, {**values, "secret": s.value, "secret_line": s.line}), source="gitleaks",
                source_task=unit, sensitivity="none", template=t, group=unit, split=split, rule_id=rule.id)

    # ---- placeholders ----------------------------------------------------------------------------
    for i, value in enumerate(SECRET_PLACEHOLDERS):
        unit = f"placeholder:secret:{i}"
        split, rng = unit_splits[unit], _rng(seed, unit)
        choices = templates_for(split, "credential")
        for _ in range(config.placeholder_repeats if choices else 0):
            t = _pick(choices, rng)
            service = _pick(GENERIC_SERVICES, rng)
            env = env_name(f"{service}-api-key")
            add(fill(t, {"secret": value, "secret_line": f"{env}={value}", "env": env, "service": service}),
                source="synthetic_negative", source_task="synthetic_negative:secret_placeholder",
                sensitivity="none", template=t, group=unit, split=split)
    for i, value in enumerate(PII_PLACEHOLDERS):
        unit = f"placeholder:pii:{i}"
        split, rng = unit_splits[unit], _rng(seed, unit)
        choices = templates_for(split, "pii")
        for _ in range(config.placeholder_repeats if choices else 0):
            t = _pick(choices, rng)
            add(fill(t, {"pii": value}), source="synthetic_negative", source_task="synthetic_negative:pii_placeholder",
                sensitivity="none", template=t, group=unit, split=split)

    log.info("sensitivity: %d rows (%s)", len(rows), dict(stats))
    return SensitivityResult(rows, unit_splits, {**stats, "units": {k: dict(v) for k, v in unit_counts.items()}})
