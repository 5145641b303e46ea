"""Normalization of telephone numbers (ANI and destination).

This one function is used in two places. At authorization it reads
Calling-Station-Id and Called-Station-Id. When an operator binds an ANI to a
card it reads that number too. Because both go through the same code with
the same rules, a bound number always matches the way the NAS later sends it.

The result is the number in international form, as digits only, with no
``+`` and no international prefix: ``+44 20 7946 0018`` becomes
``442079460018``. An empty string means "no usable number". Callers must
treat it as absent and never as a number to match.

This module is pure: no I/O, no clock reads, no logging.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import unquote

_SEPARATORS = str.maketrans("", "", " -.()")
"""Visual separators dropped from a number: space, '-', '.', '(' and ')'."""

_URI_SCHEMES = ("sip:", "sips:", "tel:")


def is_ascii_digits(text: str) -> bool:
    """True when ``text`` is non-empty and made of 0-9 only.

    ``str.isdigit`` alone also accepts other Unicode digits (for example Arabic-Indic digits
    or superscripts), and those never go on a keypad nor in a number a NAS sends.
    """
    return text.isascii() and text.isdigit()


def _longest_first(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """The prefixes sorted longest first, so "011" is tried before "01"."""
    return tuple(sorted(prefixes, key=len, reverse=True))


def _strip_longest(text: str, prefixes: tuple[str, ...]) -> tuple[str, bool]:
    """Remove the longest prefix of ``text`` found in ``prefixes`` (one at most).

    Returns the remaining text and whether a prefix was removed.
    """
    for prefix in _longest_first(prefixes):
        if text.startswith(prefix):
            return text[len(prefix) :], True
    return text, False


def _check_digit_prefixes(name: str, values: tuple[str, ...]) -> None:
    """Raise ValueError unless ``values`` is a tuple of non-empty digit strings."""
    if not isinstance(values, tuple):
        raise ValueError(f"{name} must be a list of digit strings, got {values!r}")
    for value in values:
        if not isinstance(value, str) or not is_ascii_digits(value):
            raise ValueError(f"{name} entries must be non-empty digit strings, got {value!r}")


@dataclass(frozen=True)
class NumberRules:
    """Site rules for turning a number as dialled or sent into international form.

    Attributes:
        international_prefixes: Dialling prefixes that mean "an international
            number follows", for example "00" (most of the world) or "011"
            (North America). They are stripped from the front of a number
            that has no ``+``. The longest match wins.
        national_prefix: The trunk prefix for a national number, for example
            "0" in the UK or Germany, or "8" in Russia. It applies only when
            ``country_code`` is set as well. A number that starts with it has
            the prefix replaced by ``country_code``. Empty means no national
            rule.
        country_code: This site's E.164 country code (1 to 3 digits, not
            starting with 0), for example "44". It is used only together with
            ``national_prefix``.
        strip_prefixes: Technology or routing prefixes that some NASes or
            gateways put in front of the number, for example "#" or "101#".
            The longest match is stripped once, from the raw user part and
            before separators are removed, so it must be written exactly as
            it arrives.

    Decision: the rules are checked on construction, so an invalid rule set
    cannot exist whether it came from code or from ``from_mapping``.
    """

    international_prefixes: tuple[str, ...] = ("00", "011")
    national_prefix: str = ""
    country_code: str = ""
    strip_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_digit_prefixes("international_prefixes", self.international_prefixes)
        if not isinstance(self.national_prefix, str) or (
            self.national_prefix and not is_ascii_digits(self.national_prefix)
        ):
            raise ValueError(
                f"national_prefix must be empty or digits only, got {self.national_prefix!r}"
            )
        if not isinstance(self.country_code, str) or (
            self.country_code
            and not (
                is_ascii_digits(self.country_code)
                and len(self.country_code) <= 3
                and not self.country_code.startswith("0")
            )
        ):
            raise ValueError(
                "country_code must be empty or 1 to 3 digits not starting with 0, "
                f"got {self.country_code!r}"
            )
        if not isinstance(self.strip_prefixes, tuple) or not all(
            isinstance(p, str) and p and p == p.strip() for p in self.strip_prefixes
        ):
            raise ValueError(
                "strip_prefixes must be a list of non-empty strings without surrounding "
                f"spaces, got {self.strip_prefixes!r}"
            )

    @classmethod
    def from_mapping(cls, d: Mapping[str, object]) -> NumberRules:
        """Build the rules from a configuration section.

        Missing keys keep their defaults. Lists become tuples. A single string
        where a list is expected counts as a one-element list, so ``"00"``
        means ``("00",)`` and never ``("0", "0")``.

        Decisions:
        - An unknown key is a ValueError. A misspelt key would otherwise
          quietly leave the default in place.
        - Values must be strings. A bare integer such as ``national_prefix =
          0`` or ``international_prefixes = [00]`` is rejected, because
          integers lose leading zeros, which these prefixes depend on.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown number rule setting(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        kwargs: dict[str, object] = {}
        for name in ("international_prefixes", "strip_prefixes"):
            if name in d:
                kwargs[name] = _as_str_tuple(name, d[name])
        for name in ("national_prefix", "country_code"):
            if name in d:
                value = d[name]
                if not isinstance(value, str):
                    raise ValueError(
                        f"{name} must be a quoted string (leading zeros matter), got {value!r}"
                    )
                kwargs[name] = value
        return cls(**kwargs)  # type: ignore[arg-type]


def _as_str_tuple(name: str, value: object) -> tuple[str, ...]:
    """Turn a configured string or list or tuple of strings into a tuple of strings."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, str):
                raise ValueError(
                    f"{name} entries must be quoted strings (leading zeros matter), got {item!r}"
                )
        return tuple(value)
    raise ValueError(f"{name} must be a list of strings, got {value!r}")


def _user_part(raw: str) -> str:
    """The part of ``raw`` that carries the number, taken from a SIP or TEL URI if there is one.

    Handles:
    - a name-addr such as ``"Bob" <sip:+44123@host>``: the text between the
      angle brackets is used;
    - ``sip:``/``sips:``: the user before ``@``, without a ``:password`` or
      ``;user-params``. Decision: a SIP URI with no ``@`` has no user part,
      so its host is used, and a host name fails later as not being digits;
    - ``tel:``: the number before any ``;parameters``.
    The user part of a URI is percent-decoded (``%23`` becomes ``#``) so that
    technology prefixes match. Input that is not a URI is returned with
    surrounding whitespace trimmed.
    """
    text = raw.strip()
    if "<" in text and ">" in text.split("<", 1)[1]:
        text = text.split("<", 1)[1].split(">", 1)[0].strip()
    lowered = text.lower()
    scheme = next((s for s in _URI_SCHEMES if lowered.startswith(s)), None)
    if scheme is None:
        return text
    rest = text[len(scheme) :]
    if scheme == "tel:":
        user = rest.split(";", 1)[0]
    else:
        user = rest.split("@", 1)[0] if "@" in rest else rest.split(";", 1)[0]
        user = user.split("?", 1)[0].split(";", 1)[0].split(":", 1)[0]
    return unquote(user).strip()


@functools.lru_cache(maxsize=4096)
def normalize_number(raw: str, rules: NumberRules) -> str:
    """Return ``raw`` in international form as digits only, or "" if it is not a usable number.

    A pure function, and a call's numbers come in each of its packets: the last few thousand
    results are kept.

    Steps, in order:
    1. Take the user part of a SIP or TEL URI if there is one
       (``sip:+441234@host;user=phone`` gives ``+441234``, ``tel:+44-1234``
       gives ``+44-1234``).
    2. Strip the longest matching ``rules.strip_prefixes`` entry, once.
    3. Drop the visual separators space, '-', '.', '(' and ')'.
    4. A leading ``+`` means the number is already international: drop the
       ``+``. Otherwise strip the longest matching international prefix.
       Otherwise, when both ``national_prefix`` and ``country_code`` are set
       and the number starts with the national prefix, replace that prefix
       with the country code. Otherwise leave the number as it is.

    The result is "" when anything other than 0-9 remains (letters, '*',
    '#', a '+' anywhere but first), or when no digits remain.

    Decision: after ``+`` or an international prefix the number must start
    with a country code, and E.164 country codes never start with 0. So in
    that case a leading 0 also gives "". This keeps the function idempotent
    with the default rules, because an international-form result never
    starts with "0" and so never looks like "00..." again. Likewise a
    national prefix with nothing after it gives "", not a bare country code.
    """
    number = _user_part(raw)
    number, _ = _strip_longest(number, rules.strip_prefixes)
    number = number.translate(_SEPARATORS)
    if number.startswith("+"):
        number, international = number[1:], True
    else:
        number, international = _strip_longest(number, rules.international_prefixes)
    if not is_ascii_digits(number):
        return ""
    if international:
        return "" if number.startswith("0") else number
    if rules.national_prefix and rules.country_code and number.startswith(rules.national_prefix):
        rest = number[len(rules.national_prefix) :]
        return rules.country_code + rest if rest else ""
    return number
