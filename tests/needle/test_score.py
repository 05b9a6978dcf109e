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


def test_recites_finds_a_run_of_context_words_outside_the_needles():
    from lwm_core.needle.score import RECITED_WORDS, recites

    needle = "The special magic Paris number is: 1234567"
    hay = " ".join(f"word{i}" for i in range(40))
    prompt = f"You are a helpful assistant. USER: \n{needle}\n {hay} What is the special magic Paris number?"
    assert recites(prompt, prompt, [needle])
    run = " ".join(f"word{i}" for i in range(RECITED_WORDS))
    assert recites(f"Sure: {run}", prompt, [needle])
    assert not recites(" ".join(f"word{i}" for i in range(RECITED_WORDS - 1)), prompt, [needle])
    # quoting the needle, or the question's words, is an answer, not a recitation
    assert not recites(f"{needle}. The special magic Paris number is 1234567.", prompt, [needle])
    # a run across the needle's place does not count: the needle is cut out first
    assert not recites("helpful assistant user word0 word1 word2 word3 word4 word5 word6 word7 word8", prompt,
                       [needle])
