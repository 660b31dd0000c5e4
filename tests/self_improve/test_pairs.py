import json

import pytest

from convergence_jax.self_improve.pairs import (
    PairFilter,
    PreferencePair,
    distinct_n,
    filter_pairs,
    load_pairs,
    ngram_similarity,
    save_pairs,
)


def _pairs():
    return [
        PreferencePair("what is 2 + 2 ?", "4", "5", {"round": 0, "persona": "a"}),
        PreferencePair("name a red fruit please", "apple", "apple"),
        PreferencePair("what is 2 + 2 ?", "four", "five"),  # duplicate prompt
        PreferencePair("say something long", "x " * 50, "y"),
        PreferencePair("repeat yourself", "a a a a a a", "b c d e f g"),
        PreferencePair("what is 3 + 5 ?", "8", "9"),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_round_trip(tmp_path, suffix):
    data = _pairs()
    path = save_pairs(data, tmp_path / f"sub/pairs{suffix}")
    assert load_pairs(path) == data
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_jsonl_is_one_object_per_line(tmp_path):
    path = save_pairs(_pairs()[:2], tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {
        "prompt": "what is 2 + 2 ?",
        "chosen": "4",
        "rejected": "5",
        "meta": {"round": 0, "persona": "a"},
    }


def test_load_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path.write_text(good + "\n\n" + '{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"line 3: missing key\(s\) \['rejected'\]"):
        load_pairs(path)
    path.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load_pairs(path)
    bad_type = tmp_path / "t.json"
    bad_type.write_text('[{"prompt": 1, "chosen": "a", "rejected": "b"}]')
    with pytest.raises(ValueError, match="item 0: PreferencePair.prompt must be a str"):
        load_pairs(bad_type)
    with pytest.raises(ValueError, match=".jsonl or .json"):
        save_pairs([], tmp_path / "p.txt")


def test_distinct_and_similarity():
    assert distinct_n("a a a a", 1) == 0.25
    assert distinct_n("a b a b", 2) == 2 / 3
    assert distinct_n("a", 2) == 1.0
    assert distinct_n("abab", 2, unit="char") == 2 / 3
    assert ngram_similarity("a b c d", "a b c d", 2) == 1.0
    assert ngram_similarity("a b c", "b c d", 2) == 1 / 3
    assert ngram_similarity("x", "y", 3) == 0.0


def test_filter_counts_each_pair_once():
    kept, counts = filter_pairs(
        _pairs(), PairFilter(max_length=20, min_distinct=0.5, dedup_threshold=0.8)
    )
    assert [p.prompt for p in kept] == ["what is 2 + 2 ?", "what is 3 + 5 ?"]
    assert counts == {
        "kept": 2,
        "identical": 1,
        "too_short": 0,
        "too_long": 1,
        "low_diversity": 1,
        "near_duplicate": 1,
    }
    assert sum(counts.values()) == len(_pairs())


def test_filter_lengths_in_chars_and_threshold():
    data = [PreferencePair("abcdef", "abc", "ab"), PreferencePair("abcdeg", "x", "yz")]
    kept, counts = filter_pairs(data, PairFilter(unit="char", min_length=2))
    assert counts["too_short"] == 1 and len(kept) == 1
    # prompts share 3 of 5 character trigrams: kept at 0.9, dropped at 0.5
    data = [PreferencePair("abcdef", "ab", "cd"), PreferencePair("abcdeg", "ab", "cd")]
    assert len(filter_pairs(data, PairFilter(unit="char"))[0]) == 2
    assert len(filter_pairs(data, PairFilter(unit="char", dedup_threshold=0.5))[0]) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"unit": "token"},
        {"min_length": 5, "max_length": 2},
        {"min_distinct": 1.5},
        {"dedup_threshold": 0.0},
        {"dedup_n": 0},
    ],
)
def test_bad_filter(kwargs):
    with pytest.raises(ValueError, match="PairFilter"):
        PairFilter(**kwargs)


def test_parse_ranking_first_or_last():
    from convergence_jax.self_improve.pairs import parse_ranking

    text = "Answer as 'ranking: 1 > 2'. ... **Ranking:** 2 > 1"
    assert parse_ranking(text) == (1, 2)
    assert parse_ranking(text, which="last") == (2, 1)
    assert parse_ranking("ranking = 2 > 1", which="last") == (2, 1)
    with pytest.raises(ValueError, match="which"):
        parse_ranking(text, which="middle")
