"""RULER's string_match_all: share of the answers found, case-insensitive, control characters cleaned."""

import pytest

from lwm_core.errors import LWMError
from lwm_core.needle.score import is_empty, score


def test_all_some_or_none_of_the_answers():
    assert score("The special magic number is 7342816.", ["7342816"]) == 1.0
    assert score("7342816 and 1111111", ["7342816", "2222222", "1111111", "3333333"]) == 0.5
    assert score("I do not know.", ["7342816", "1111111"]) == 0.0


def test_case_insensitive_both_ways():
    assert score("THE KEY IS Abc-Def", ["abc-def"]) == 1.0
    assert score("the key is abc-def", ["ABC-DEF"]) == 1.0


def test_control_characters_become_separators_not_glue():
    # RULER replaces [\x00-\x1f] with a newline: the number survives a control character around it...
    assert score("\x00\x1b7342816\x07\n", ["7342816"]) == 1.0
    # ...but two halves split by one are not glued back into the answer.
    assert score("734\x002816", ["7342816"]) == 0.0
    # The answers are cleaned the same way.
    assert score("7342816", ["\t7342816\n"]) == 1.0


def test_substring_matches_count_as_ruler_does():
    assert score("the number is 173428160", ["7342816"]) == 1.0


def test_answers_that_would_match_anything_are_refused():
    with pytest.raises(LWMError, match="no answers"):
        score("anything", [])
    with pytest.raises(LWMError, match="answer is empty"):
        score("anything", ["7342816", " \x00"])
    with pytest.raises(LWMError, match="list of strings"):
        score("7342816", "7342816")
    with pytest.raises(LWMError, match="must be strings"):
        score("7342816", [7342816])


def test_empty_responses():
    assert is_empty("") and is_empty("  \n\t") and is_empty("\x00\x1b ")
    assert not is_empty(" 0 ")
    assert score("", ["7342816"]) == 0.0
