"""PII detection (app/assistant/pii.py): each form found with its kind and exact span, and the hard negatives
(bad checksums, never-issued SSNs, version numbers, dates, order numbers, amounts, phone look-alikes) left alone.
The named-entity extra (app/assistant/pii_ner.py) is tested through its wiring with a fake recognizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.assistant.pii import PiiSpan, find_pii, parse_phone_regions, redact_pii
from app.assistant.pii_ner import NerUnavailable, PiiNer, install_hint, load_presidio
from app.assistant.pii_restore import PiiVault
from tests.conftest import settings_for
from tests.fakes.ner import FakeRecognizer


def found(text: str, **kw: object) -> list[tuple[str, str]]:
    return [(s.kind, text[s.start : s.end]) for s in find_pii(text, **kw)]  # type: ignore[arg-type]


# -- phone numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Call me on +44 20 7946 0958 please", "+44 20 7946 0958"),
        ("my cell is 212-736-5000", "212-736-5000"),
        ("office (212) 736-5000", "(212) 736-5000"),
        ("Ring +49 30 901820 tomorrow", "+49 30 901820"),
        ("Paris: +33 1 42 68 53 00.", "+33 1 42 68 53 00"),
        ("UK landline 020 7946 0958", "020 7946 0958"),
        ("reach me at 212.736.5000 x123", "212.736.5000 x123"),
        ("Please call 2127365000", "2127365000"),  # bare digits, but libphonenumber says it is a valid US number
        ("Phone:\n21 284 698 2548\n", "21 284 698 2548"),  # in no configured plan, but labelled as a phone
        ("whatsapp +15417543010", "+15417543010"),
        # The label after the number (contact cards; forms from benchmarks/phone_fresh.py, not presidio_synth).
        ("Ana Miranda\n07658225245-Fax\n", "07658225245"),
        ("90224810 Mobile", "90224810"),
        ("52 94 12 22 Main", "52 94 12 22"),
        ("(351) 216 013 864 (mobile)", "(351) 216 013 864"),
        ("Dinis Nogueira | 213627978 - Home", "213627978"),
        ("48154443 is my cell, the old one is disconnected", "48154443"),
    ],
)
def test_phone_numbers_are_found_with_their_exact_span(text: str, number: str) -> None:
    assert found(text) == [("PHONE", number)]


def test_national_numbers_are_read_in_the_configured_regions_only() -> None:
    text = "Ruf mich an: 030 901820 55"
    assert found(text, phone_regions=["DE"]) == [("PHONE", "030 901820 55")]
    # "+" numbers need no region
    assert found("Ruf mich an: +49 30 90182055", phone_regions=["US"]) == [("PHONE", "+49 30 90182055")]


@pytest.mark.parametrize(
    "text",
    [
        "Order 2125551234 has not arrived",  # a valid-looking number, but labelled as an order number
        "Order #2127365000 was charged twice",
        "invoice no. 99887766",
        "ref 212 736 5000",
        "Your order 123-456-7890 shipped",
        "My driver's license number is 2270-66-1551",
        "ISBN 978-3-16-148410-0",
        "pages 100-200 and chapters 3-7",
        "from 1999-2004 we sold 12 345 678 items",
        "I paid 1 200 000 dollars, it costs $1 250 000",
        "delivered on 2024-05-01 at 10:30, or 12/03/2023, or 03.04.2024",
        "version 2.0.1 and build 10.4.3.2",
        "256.1.1.1 1.2.3",
        "between 2019 and 2021, room 1204 on floor 12",
        "Track it at https://shop.example.com/orders/5551234567?ref=1",
        "3744 Retreat Avenue",  # a house number
        "the total was 509 941 264",  # an amount
        "version 10.12.1.18 crashes on start",
        "Order 2125551234-Home delivery was late",  # a label after an identifier does not make it a phone
    ],
)
def test_phone_look_alikes_are_not_phone_numbers(text: str) -> None:
    assert found(text) == []


def test_unknown_phone_region_names_the_valid_form(tmp_path: Path) -> None:
    assert parse_phone_regions(" us, gb ") == ("US", "GB")
    with pytest.raises(ValueError, match="ISO 3166"):
        parse_phone_regions("US,XX")
    with pytest.raises(ValueError, match="ISO 3166"):
        settings_for(tmp_path, pii_phone_regions="England")


# -- US SSNs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ssn"),
    [
        ("SSN 514-69-0360", "514-69-0360"),
        ("ssn: 514 69 0360", "514 69 0360"),
        ("it is 514.69.0360", "514.69.0360"),
        ("my SSN is 514690360", "514690360"),
        ("Social Security number: 853371694", "853371694"),
    ],
)
def test_ssn_forms(text: str, ssn: str) -> None:
    assert found(text) == [("US_SSN", ssn)]


@pytest.mark.parametrize(
    "text",
    [
        "SSN 000-12-3456",  # area 000 never issued
        "SSN 666-12-3456",  # area 666
        "SSN 912-34-5678",  # area 9xx (ITINs)
        "SSN 123-00-4567",  # group 00
        "SSN 123-45-0000",  # serial 0000
        "SSN 123-45 6789",  # mixed separators
        "SSN 111-11-1111",  # one digit repeated
        "SSN 078-05-1120",  # the voided Woolworth card number
        "tracking 514690360",  # nine bare digits without an SSN word
        "parcel 514690360 arrived",
    ],
)
def test_invalid_or_unlabelled_ssns_are_rejected(text: str) -> None:
    assert [k for k, _ in found(text)] == []


# -- IP addresses --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("from 192.168.10.4.", "192.168.10.4"),
        ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
        ("compressed 2001:db8::8a2e:370:7334", "2001:db8::8a2e:370:7334"),
        ("loopback ::1 only", "::1"),
        ("link-local fe80::1%eth0 down", "fe80::1%eth0"),
        ("mapped ::ffff:192.0.2.128 seen", "::ffff:192.0.2.128"),
        ("bracketed [2001:db8::1]:8080", "2001:db8::1"),
        ("with a port 192.168.1.20:8080", "192.168.1.20"),  # the port is not part of the address
        ("block 10.0.0.0/8 blocked", "10.0.0.0/8"),  # a CIDR block keeps its prefix
        ("address 6e40:4041:c617:e898:c11:40d2:c669:2eb4 blocked", "6e40:4041:c617:e898:c11:40d2:c669:2eb4"),
    ],
)
def test_ip_forms(text: str, address: str) -> None:
    assert found(text) == [("IP_ADDRESS", address)]


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1 is out of range",
        "version 1.2.3.4 and v1.2.3.4",
        "MAC 00:1a:2b:3c:4d:5e",
        "at 10:30:45",
        "std::vector and a::b and ::",
        "1.2.3",
    ],
)
def test_ip_look_alikes(text: str) -> None:
    assert [k for k, _ in found(text)] == []


# -- cards, IBANs, emails ------------------------------------------------------------------------------------
def test_checksums_decide_cards_and_ibans() -> None:
    assert found("card 4111 1111 1111 1111") == [("CREDIT_CARD", "4111 1111 1111 1111")]
    assert found("card 4111-1111-1111-1111") == [("CREDIT_CARD", "4111-1111-1111-1111")]
    assert found("IBAN GB82 WEST 1234 5698 7654 32") == [("IBAN", "GB82 WEST 1234 5698 7654 32")]
    # bad checksums: nothing, and the digits of a failed IBAN are not read as a phone number either
    assert found("card 4111 1111 1111 1112, IBAN GB82 WEST 1234 5698 7654 33") == []
    # two SSN-like numbers side by side are not one card, even when the digits pass Luhn
    assert found("000-12-3456 666-12-3456") == []


def test_emails() -> None:
    assert found("Mail jane.doe+shop@example.co.uk now") == [("EMAIL", "jane.doe+shop@example.co.uk")]
    assert found("user@localhost or @handle or a@b") == []


# -- API -----------------------------------------------------------------------------------------------------
def test_find_pii_spans_kinds_filter_and_redaction_agree() -> None:
    text = "Mail jane@example.com, call +1-212-736-5000, SSN 514-69-0360, from 10.0.0.7."
    spans = find_pii(text)
    assert [s.kind for s in spans] == ["EMAIL", "PHONE", "US_SSN", "IP_ADDRESS"]
    assert all(isinstance(s, PiiSpan) and text[s.start : s.end] == s.value for s in spans)
    assert [s.kind for s in find_pii(text, kinds={"PHONE", "US_SSN"})] == ["PHONE", "US_SSN"]
    assert redact_pii(text).text == "Mail [EMAIL], call [PHONE], SSN [US_SSN], from [IP_ADDRESS]."
    assert redact_pii(text, {"EMAIL"}).text.startswith("Mail [EMAIL], call +1-212-736-5000")


# -- the named-entity extra ------------------------------------------------------------------------------------
def test_recognizer_spans_join_the_structured_ones_without_overlapping_them() -> None:
    fake = FakeRecognizer(["Jane Doe", "jane"], ["3744 Retreat Avenue"])
    text = "I'm Jane Doe, jane@example.com, at 3744 Retreat Avenue"
    assert found(text, recognizers=[fake]) == [
        ("PERSON", "Jane Doe"), ("EMAIL", "jane@example.com"), ("ADDRESS", "3744 Retreat Avenue")]
    assert found(text) == [("EMAIL", "jane@example.com")]  # off: structured kinds only


def test_ner_is_off_by_default_and_turned_on_by_setting_or_tenant_policy(tmp_path: Path) -> None:
    fake = FakeRecognizer(["Jane Doe"])
    loads: list[str] = []

    def load(model: str) -> FakeRecognizer:
        loads.append(model)
        return fake

    off = PiiNer(settings_for(tmp_path), load=load)
    assert off.recognizers({}) == [] and off.recognizers(None) == []
    assert off.recognizers({"pii_ner": True}) == [fake]
    on = PiiNer(settings_for(tmp_path, pii_ner=True, pii_ner_model="en_core_web_sm"), load=load)
    assert on.recognizers({}) == [fake]
    assert on.recognizers({"pii_ner": False}) == []
    assert loads == ["en_core_web_lg", "en_core_web_sm"]  # loaded once per PiiNer, with the configured model
    vault = PiiVault(on.recognizers({}))
    masked = vault.mask("Hi, Jane Doe here, jane@example.com")
    assert masked == "Hi, [PERSON_1] here, [EMAIL_1]"
    assert vault.restore("Thanks [PERSON_1], we wrote to [EMAIL_1].").text == (
        "Thanks Jane Doe, we wrote to jane@example.com.")


def test_ner_enabled_but_not_installed_names_the_fix(tmp_path: Path) -> None:
    # This environment has no spaCy model package: the real loader must refuse, never download one.
    with pytest.raises(NerUnavailable) as err:
        load_presidio("en_core_web_no_such_model")
    assert "pip install 'switchboard[ner]'" in str(err.value) and "en_core_web_no_such_model" in str(err.value)
    assert "SWITCHBOARD_PII_NER=false" in install_hint("m")
    ner = PiiNer(settings_for(tmp_path, pii_ner=True, pii_ner_model="en_core_web_no_such_model"))
    assert ner.recognizers({"pii_ner": False}) == []
    with pytest.raises(NerUnavailable, match="switchboard\\[ner\\]"):
        ner.recognizers({})
