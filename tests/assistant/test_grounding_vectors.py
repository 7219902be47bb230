"""Which reply sentences the grounding check embeds (app/assistant/grounding.py, `sentence_vectors`): a sentence
that quotes one of its passages' units takes that unit's vector, and the vectors and verdicts are the ones an
embedding of the sentence gives."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from app.assistant.grounding import GroundingChecker
from app.assistant.text_measures import plain_text
from tests.assistant.helpers import PERSONA, RETURNS_DOC, SHIPPING_FAQ, FakePassage

RETURNS = FakePassage("c1", "returns.md", "Returns policy", RETURNS_DOC, 0.8)
SHIPPING = FakePassage("c2", "faq.csv", "", SHIPPING_FAQ, 0.7)
# A wrapped markdown paragraph, bold, a curly apostrophe, a table: texts whose units are not the raw lines.
REPAIRS = FakePassage("w1", "warranty.md", "Paid repairs", (
    "We email a quote before starting any repair over $30. Paid repairs take about **3 weeks** from when the item "
    "reaches\nthe shop (6 weeks in May and June, our busiest season). Return shipping for paid repairs is a flat "
    "$9.95 in the US,\nor free if you collect from a store. We can\u2019t repair zips.\n"), 0.8)
SIZES = FakePassage("s1", "size-guide.md", "Boot sizes", (
    "| Foot length (cm) | Men's US | EU |\n|---|---|---|\n| 27.5 | 9.5 | 43.5 |\n| 28.5 | 10.5 | 44.5 |\n"), 0.8)


class CountingEmbed:
    """The model's `embed_documents`, recording every call's texts."""

    def __init__(self, embed_documents: object) -> None:
        self.inner = embed_documents
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return self.inner(texts)  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="module")
def embed(tmp_path_factory: pytest.TempPathFactory) -> CountingEmbed:
    from app.providers.embeddings.minilm import MiniLMEmbedder

    return CountingEmbed(MiniLMEmbedder(cache_dir=tmp_path_factory.mktemp("models")).embed_documents)


@pytest.fixture
def checker(embed: CountingEmbed) -> GroundingChecker:
    embed.calls.clear()
    return GroundingChecker(embed)


@pytest.mark.parametrize("passage", [RETURNS, SHIPPING, REPAIRS, SIZES])
def test_a_unit_text_embedded_as_a_reply_sentence_is_its_units_row_bit_for_bit(checker, passage) -> None:
    """The units are embedded together, a passage at a time; a reply's sentences together, a reply at a time:
    the same text gets the same vector whatever it is embedded with (no prefix, mean pooling over its own
    tokens), so reusing the row changes nothing."""
    units = checker._units(passage)
    others = ["Hello there.", "A much longer reply sentence that pads the batch with many more tokens than the "
              "unit has, so that every shorter text in the same model call is padded."]
    for row, text in zip(units.vectors, units.texts, strict=True):
        alone = np.asarray(checker.embed([text])[0], dtype=np.float32)
        batched = np.asarray(checker.embed([*others, text])[-1], dtype=np.float32)
        assert np.array_equal(alone, row) and np.array_equal(batched, row), text


def test_a_verbatim_reply_costs_no_model_call(checker, embed: CountingEmbed) -> None:
    checker.check("Returns take a while [1]. Shipping abroad is possible [2].", [RETURNS, SHIPPING], PERSONA)
    assert embed.calls  # the passages' units, and the two sentences that quote nothing
    embed.calls.clear()
    reply = ("Hi, I'm Ava from Northwind Outfitters! You can return unworn items within 30 days of delivery for a "
             "full refund [1]. Sale items are final sale and cannot be returned [1]. International delivery takes "
             "5-10 business days [2]. Anything else?")
    verdict = checker.check(reply, [RETURNS, SHIPPING], PERSONA)
    assert verdict.grounded and sum(s.factual for s in verdict.sentences) == 3
    assert embed.calls == []


def test_only_sentences_that_are_measured_and_quote_nothing_are_embedded(checker, embed: CountingEmbed) -> None:
    checker.check("Sale items are final sale [1].", [RETURNS], PERSONA)  # the passage's units
    embed.calls.clear()
    reply = ("Sale items are final sale and cannot be returned [1]. Unworn items can be returned for a full "
             "refund within 30 days of delivery [1]. Unworn items can be returned for a full refund within 30 "
             "days of delivery [1].\nWe also repair every boot for free.")
    verdict = checker.check(reply, [RETURNS], PERSONA)
    # one call, the paraphrase once; the quote takes its unit's row; the last sentence cites nothing (not measured)
    assert embed.calls == [["Unworn items can be returned for a full refund within 30 days of delivery."]]
    assert [s.problem for s in verdict.unsupported] == ["no_citation"]


def test_a_quote_that_plain_text_changes_is_embedded(checker, embed: CountingEmbed) -> None:
    """A reply sentence is compared as `plain_text` reads it (a curly apostrophe straightened); the units keep the
    passage's characters, so that quote matches no unit and is embedded as before."""
    checker.check("Paid repairs take about 3 weeks [1].", [REPAIRS], PERSONA)
    embed.calls.clear()
    checker.check("We can\u2019t repair zips [1].", [REPAIRS], PERSONA)
    assert embed.calls == [["We can't repair zips."]]


def test_measures_with_reused_vectors_equal_measures_with_embedded_ones(checker, embed: CountingEmbed) -> None:
    """Every case of the grounding benchmark's northwind split (benchmarks/grounding_cases.py) whose sentence is
    a unit of its passage: the same measures as with the sentence embedded, and no embedding asked for it."""
    from benchmarks.grounding_cases import build_cases, northwind_passages

    cases = build_cases("northwind", northwind_passages())
    reused = 0
    for case in cases:
        units = checker._units(case.passage)
        if plain_text(case.sentence) not in units.texts:
            continue
        reused += 1
        embed.calls.clear()
        measures = checker.measure(case.sentence, [case.passage])
        assert embed.calls == []
        vector = checker.embed([plain_text(case.sentence)])[0]
        assert measures == checker.measure(case.sentence, [case.passage], vector=vector), case.sentence
    assert reused >= 40  # the verbatim cases, at least


def test_concurrent_checks_share_model_calls_and_reach_the_same_verdicts(tmp_path) -> None:
    from app.providers.embeddings.minilm import MiniLMEmbedder

    embedder = MiniLMEmbedder(cache_dir=tmp_path / "models")
    unbatched = GroundingChecker(embedder.embed_documents)
    batched = GroundingChecker(embedder.embed_documents, embed_sentences=embedder.embed_sentences)
    replies = [  # paraphrases and inventions: each needs its sentence embedded
        "Unworn items can be returned for a full refund within 30 days of delivery [1].",
        "Yes, we deliver to thirty countries and it takes 5-10 business days [1].",
        "All our gear comes with a lifetime free-repair guarantee [1].",
        "Items bought on sale cannot be sent back [1]. Refunds reach your card within a week [1].",
    ] * 4
    cited = [[RETURNS], [SHIPPING], [RETURNS], [RETURNS]] * 4
    expected = [unbatched.check(r, c, PERSONA) for r, c in zip(replies, cited, strict=True)]
    for passages in cited:
        batched._units(passages[0])  # the passages' units, embedded once beforehand
    calls_before = embedder.queries.stats.calls
    got: dict[int, object] = {}
    barrier = threading.Barrier(len(replies), timeout=20)

    def check(i: int) -> None:
        barrier.wait()
        got[i] = batched.check(replies[i], cited[i], PERSONA)

    threads = [threading.Thread(target=check, args=(i,), daemon=True) for i in range(len(replies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [got[i] for i in range(len(replies))] == expected
    assert not all(v.grounded for v in expected) and any(v.grounded for v in expected)
    assert embedder.queries.stats.calls - calls_before < len(replies)
    assert embedder.queries.stats.largest > 1


def test_a_passage_is_embedded_once_for_every_checker_sharing_a_cache(embed: CountingEmbed) -> None:
    """Answering processes of embedded `serve` share its passage cache (app/answerers.py): a passage another
    checker already measured costs this one no model call, and the units are the same."""
    from app.assistant.passage_units import PassageCache

    shared = PassageCache()
    first, second = GroundingChecker(embed, shared=shared), GroundingChecker(embed, shared=shared)
    embed.calls.clear()
    units = first._units(RETURNS)
    assert len(embed.calls) == 1
    again = second._units(RETURNS)
    assert len(embed.calls) == 1 and again is units
    alone = GroundingChecker(embed)._units(RETURNS)  # no shared cache: embedded again, to the same vectors
    assert len(embed.calls) == 2 and (alone.vectors == units.vectors).all()


def test_threads_citing_a_passage_for_the_first_time_at_once_embed_it_once(embed: CountingEmbed) -> None:
    """A burst of the same question after a start: the first thread embeds the passage's units, the others wait
    for it (they are seen blocked in `_units`) instead of embedding it again each; a failed build leaves the
    passage to the next thread."""
    import sys

    started, release = threading.Event(), threading.Event()

    def gated(texts: Sequence[str]) -> list[list[float]]:
        started.set()
        release.wait(30)
        return embed(texts)

    checker = GroundingChecker(gated)
    embed.calls.clear()
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(checker._units(SHIPPING)))
    first.start()
    assert started.wait(30)
    others = [threading.Thread(target=lambda: results.append(checker._units(SHIPPING))) for _ in range(3)]
    for thread in others:
        thread.start()

    def waiting_in_units(thread: threading.Thread) -> bool:
        frame = sys._current_frames().get(thread.ident or -1)
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        return "_units" in names and "gated" not in names and names[0] == "wait"

    tries = 3000  # up to ~30 s for the three to get there
    while not all(waiting_in_units(t) for t in others) and (tries := tries - 1):
        release.wait(0.01)
    release.set()
    assert tries, "the other threads did not wait for the first one's build"
    for thread in (first, *others):
        thread.join(30)
    assert len(embed.calls) == 1
    assert len(results) == 4 and all(r is results[0] for r in results)

    failing = GroundingChecker(lambda texts: (_ for _ in ()).throw(RuntimeError("model gone")))
    with pytest.raises(RuntimeError):
        failing._units(RETURNS)
    assert failing._passages._building == {}  # nothing left for a later thread to wait on
