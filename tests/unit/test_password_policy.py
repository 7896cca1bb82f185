"""Password policy: lengths in code points after NFC, the common list, identity strings."""

from __future__ import annotations

import unicodedata

import pytest

from security.passwords import PasswordPolicyError, check_password_policy, common_passwords


def code(password, identity=()):
    with pytest.raises(PasswordPolicyError) as caught:
        check_password_policy(password, identity=identity)
    return caught.value.code


def test_a_long_unusual_password_passes_and_comes_back_nfc_normalised():
    decomposed = unicodedata.normalize("NFD", "crème brûlée à minuit")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    assert check_password_policy(decomposed) == unicodedata.normalize("NFC", decomposed)


def test_seven_characters_is_too_short_and_eight_is_enough():
    assert code("qz7#vk2") == "too_short"
    assert check_password_policy("qz7#vk2m") == "qz7#vk2m"


def test_128_characters_pass_and_129_are_too_long():
    assert len(check_password_policy("q7" * 64)) == 128
    assert code("q7" * 64 + "x") == "too_long"


def test_emoji_count_as_one_character_each():
    # 8 astral code points (4 UTF-16 units or 4 UTF-8 bytes each): long enough.
    assert check_password_policy("🔒🐙🌵🎲🧭🪐🦉🍄") == "🔒🐙🌵🎲🧭🪐🦉🍄"
    assert code("🔒🐙🌵🎲🧭🪐🦉") == "too_short"


def test_combining_sequences_are_counted_after_composition():
    # "e" + COMBINING ACUTE composes to one code point: 8 raw code points, 7 after NFC.
    assert code("e\u0301clair7") == "too_short"
    # A letter with no precomposed form keeps its combining mark: 8 code points after NFC.
    assert check_password_policy("q\u0301uark77") == "q\u0301uark77"


def test_the_length_limit_holds_for_a_long_string_of_combining_marks():
    assert code("a" + "\u0301" * 200) == "too_long"


@pytest.mark.parametrize("control", ["\x00", "\n", "\t", "\x7f", "\u0085"])
def test_control_characters_are_invalid(control):
    assert code(f"horse{control}battery") == "invalid"


def test_a_lone_surrogate_is_invalid():
    assert code("horse\ud800battery") == "invalid"


def test_spaces_and_joiners_inside_emoji_are_allowed():
    family = "👨\u200d👩\u200d👧 at home"
    assert check_password_policy(family) == family


@pytest.mark.parametrize(
    "password", ["password", "PASSWORD1", "Iloveyou", "qwertyuiop", "12345678"]
)
def test_common_passwords_are_refused_whatever_their_case(password):
    assert code(password) == "common"


def test_the_shipped_list_is_large_and_lower_cased():
    words = common_passwords()
    assert 10_000 <= len(words) <= 100_000
    assert all(word == word.lower() for word in words)


def test_a_password_containing_the_email_local_part_is_refused():
    identity = ["Marguerite.Duras@example.com"]
    assert code("marguerite.duras2024!", identity) == "contains_identity"
    assert code("xxMARGUERITE.DURASxx", identity) == "contains_identity"
    assert code("marguerite.duras@example.com", identity) == "contains_identity"


def test_a_password_equal_to_the_display_name_is_refused():
    assert code("Gaspard Ulliel", ["Gaspard Ulliel"]) == "contains_identity"


def test_identity_strings_shorter_than_four_characters_are_ignored():
    assert check_password_policy("bob-likes-turnips", identity=["bob@example.com", "Bo"])
