"""Tables in the docs equal the committed JSON they quote (docs/results/), block by block."""

import pytest

from longctx_jax.bench import memory, published


def test_every_generated_block_equals_its_json():
    stale = published.stale_blocks()
    assert not stale, ("stale generated blocks (run python -m experiments.publish_docs --config "
                       f"configs/publish_docs.py): {stale}")


def test_each_doc_quotes_its_results_through_blocks():
    names = {name for f in published.DOC_FILES
             for name, _ in published.blocks_in((published.ROOT / f).read_text())}
    assert names == set(published.BLOCKS)


def test_a_changed_number_is_caught_and_an_unknown_block_refused():
    text = (published.ROOT / "docs/benchmarks.md").read_text()
    body = dict(published.blocks_in(text))["pattern-table"]
    tampered = text.replace(body, body.replace("3.2", "3.1", 1))
    assert tampered != text and published.render(tampered) == text
    with pytest.raises(ValueError, match="no renderer"):
        published.render("<!-- generated:nope -->\nx\n<!-- /generated:nope -->")


def test_memory_results_cover_the_grid():
    results = memory.load_results(str(published.RESULTS / "memory"))
    assert [r["num_devices"] for r in results] == [8, 64, 256]
    assert len({(row["model"], row["seq_len"]) for r in results for row in r["rows"]}) == 4


def test_committed_intervals_are_the_summary_of_the_committed_rows():
    from longctx_jax.eval.perplexity import summarize

    for path in (published.EXTEND_RUN, published.EXTEND_DYNAMIC_RUN, published.FINETUNE / "results.json"):
        results = published.load(path)
        stored = results["perplexity_intervals"]
        fresh = {f"{s['method']}@{s['length']}": s for s in summarize(results["perplexity"])}
        assert fresh.keys() == stored.keys()
        for key, s in fresh.items():
            for field in ("nll", "nll_lo", "nll_hi", "ppl", "ppl_lo", "ppl_hi"):
                assert s[field] == pytest.approx(stored[key][field], rel=1e-12), (path, key, field)


def test_finetune_comparison_is_on_held_out_documents_of_the_committed_runs():
    """The fine-tuned rows of docs/finetuning.md are scored on files of the training corpus's
    validation split, by the weights of the committed runs' recipes."""
    from longctx_jax.eval.corpus import corpus_split

    results = published.load(published.FINETUNE / "results.json")
    docs = {r["doc"] for r in results["perplexity"]}
    assert len(docs) >= 2 and all(corpus_split(d, 0.05) == "validation" for d in docs)
    labels = {r["method"] for r in results["perplexity"]}
    pairs = published.finetune_pairs()
    assert {"none", *(b for _, b in pairs), *published.finetune_labels().values()} <= labels
    assert pairs == (("pi_ft", "linear"), ("yarn_ft", "yarn"))
    for variant in published.finetune_labels():
        config = published.load(published.FINETUNE / variant / "config.json")
        assert config["data"]["source"] == "stdlib" and config["data"]["val_fraction"] == 0.05
