"""Token-classification data (issue 44, first part): CoNLL-style files (any whitespace, blank lines, DOCSTART,
extra columns) and jsonl read to words and tags, the tagging scheme and label set read from the tags, word
tags aligned to a real fast tokenizer's word pieces, and malformed input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsee_deploy.errors import DSEEError
from dsee_deploy.tagging import (
    IGNORED,
    align,
    entity_scores,
    label_list,
    looks_like_conll,
    read_conll,
    read_tagged_jsonl,
    scheme_of,
    word_tags,
)

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German\tJJ\tB-NP\tB-MISC
call NN I-NP O

-DOCSTART- -X- -X- O


Peter   B-PER
Blackburn I-PER
"""


def test_conll_files_are_read_with_docstart_blank_lines_and_extra_columns(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    assert looks_like_conll(path)
    sentences, tags = read_conll(path)
    assert sentences == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert tags == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    plain = tmp_path / "texts.txt"
    plain.write_text("the film was good\na dull movie\n")
    assert not looks_like_conll(plain)  # one text a line stays plain text


def test_the_real_conll2003_files_read_as_their_readme_counts_them():
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"
    if not (root / "test.txt").is_file():
        pytest.skip(f"CoNLL-2003 is not at {root}")
    sentences, tags = read_conll(root / "test.txt")
    assert len(sentences) == 3453  # its 230 DOCSTART separators are not sentences
    assert scheme_of(tags) == "IOB2"
    assert label_list(tags) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.mark.parametrize(
    "tags, scheme",
    [
        ([["B-PER", "I-PER", "O", "B-LOC"]], "IOB2"),
        ([["I-PER", "I-PER", "O", "I-LOC"]], "IOB1"),  # entities start with I-
        ([["I-PER", "B-PER", "O"]], "IOB1"),
        ([["B-PER", "I-PER", "O", "B-LOC"], ["O", "I-ORG", "O", "B-MISC"]], "IOB2"),  # a stray I- start
        ([["B-PER", "E-PER", "S-LOC", "O"]], "BIOES"),
    ],
)
def test_the_scheme_is_read_from_the_tags(tags, scheme):
    assert scheme_of(tags) == scheme


def test_the_label_set_puts_o_first_then_types_in_bies_order():
    assert label_list([["S-PER", "B-LOC", "E-LOC", "O", "I-LOC", "B-PER"]]) == [
        "O", "B-LOC", "I-LOC", "E-LOC", "B-PER", "S-PER",
    ]  # fmt: skip


def test_tags_align_to_the_first_piece_of_each_word(tiny_bases):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bases["bert"])
    words = ["Blackburnshire", "rejects", "it"]
    encoding = tokenizer(words, is_split_into_words=True)
    word_ids = encoding.word_ids()
    aligned = align(word_ids, [3, 0, 5])
    assert len(aligned) == len(encoding["input_ids"])
    assert aligned[0] == IGNORED and aligned[-1] == IGNORED  # [CLS], [SEP]
    firsts = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    assert [aligned[i] for i in firsts] == [3, 0, 5]
    assert sum(a != IGNORED for a in aligned) == 3  # later pieces of a word are ignored


def test_jsonl_reads_tag_strings_or_ids_with_their_names(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps({"tokens": ["EU", "rejects"], "ner_tags": [1, 0]})
        + "\n"
        + json.dumps({"tokens": ["Peter"], "ner_tags": [2]})
        + "\n"
    )
    assert read_tagged_jsonl(path, names=["O", "B-ORG", "B-PER"]) == (
        [["EU", "rejects"], ["Peter"]],
        [["B-ORG", "O"], ["B-PER"]],
    )
    with pytest.raises(DSEEError, match="has tag ids, not tags"):
        read_tagged_jsonl(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("EU B-ORG\nrejects\n", "line 2 is 'rejects'"),
        ("EU B-ORG\nrejects X-VERB\n", "line 2 is 'rejects X-VERB'"),
        ("\n\n-DOCSTART- O\n", "holds no sentence"),
    ],
)
def test_malformed_conll_is_refused_in_one_line(text, expected, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DSEEError, match=expected) as info:
        read_conll(path)
    assert len(str(info.value).splitlines()) == 1


def test_jsonl_with_unequal_lists_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n")
    with pytest.raises(DSEEError, match="has 2 tokens and 1 tags"):
        read_tagged_jsonl(path)


def test_entity_scores_count_exact_spans_and_types():
    """Two of three true entities found exactly, one found with the wrong span, one invented: precision 2/4,
    recall 2/3, per type as conlleval counts it."""
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "B-MISC"]]
    scores = entity_scores(true, predicted)
    assert scores["precision"] == pytest.approx(50.0)
    assert scores["recall"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3) * 100)
    assert scores["per_type"]["PER"]["f1"] == pytest.approx(100.0)
    assert scores["per_type"]["ORG"]["f1"] == 0 and scores["per_type"]["ORG"]["support"] == 1


def test_word_tags_read_each_words_first_piece():
    labels = [[IGNORED, 1, IGNORED, 0, IGNORED]]  # [CLS] word1 ##piece word2 [SEP]
    predictions = [[0, 1, 2, 2, 0]]
    assert word_tags(predictions, labels, ["O", "B-PER", "I-PER"]) == ([["B-PER", "O"]], [["B-PER", "I-PER"]])
