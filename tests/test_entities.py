"""Per-token scores to entities (issue 44): dsee_deploy.entities, with numpy and a tokenizers Encoding only,
gives what transformers' own token-classification pipeline gives on the same model, for every aggregation
strategy, on a WordPiece tokenizer whose words split into pieces, an unknown word and punctuation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from dsee_deploy.entities import STRATEGIES, entities, softmax
from dsee_deploy.errors import DSEEError

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
PIECES = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] George Wash ##ing ##ton went to the White House in D ##C . , "
    "Peter Black ##burn said EU rejects German call Bruss ##els"
).split()
TEXTS = [
    "George Washington went to Washington DC.",
    "Peter Blackburn said the EU rejects German call, in Brussels.",
    "Zanzibar went to the White House.",  # an unknown word
]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A tiny BERT token classifier with peaked random scores, and its WordPiece tokenizer, saved together."""
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(PIECES)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(PIECES), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    model = BertForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)  # peaked scores: entities of several tokens and types
    path = tmp_path_factory.mktemp("tagger")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path, model, tok


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entities_equal_the_transformers_pipeline(tagger, strategy):
    from transformers import pipeline

    path, model, tok = tagger
    expected = pipeline("token-classification", model=str(path), aggregation_strategy=strategy)(TEXTS)
    found_any = 0
    for text, want in zip(TEXTS, expected, strict=True):
        encoding = tok.encode(text)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([encoding.ids])).logits[0].numpy()
        got = entities(
            text,
            encoding,
            softmax(logits),
            LABELS,
            strategy,
            decode=tok.decoder.decode,
            unk_id=tok.token_to_id("[UNK]"),
        )
        assert [{k: v for k, v in e.items() if k != "score"} for e in got] == [
            {k: v for k, v in e.items() if k != "score"} for e in want
        ]
        assert np.allclose([e["score"] for e in got], [e["score"] for e in want], atol=1e-5)
        found_any += len(got)
    assert found_any > 3  # the model finds entities: the comparison is not of empty lists


def test_an_unknown_strategy_is_refused():
    with pytest.raises(DSEEError, match="aggregation strategy 'longest' is not one of"):
        entities("a", None, np.zeros((1, 2)), ["O", "B-X"], "longest")
