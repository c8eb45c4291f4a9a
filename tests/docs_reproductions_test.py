"""docs/reproductions.md: every verdict is the one its rule gives on the committed JSON."""

import copy

import pytest

from longctx_jax.bench import published
from longctx_jax.eval import claims, verdicts
from longctx_jax.search import longrope_claim

DOC = published.ROOT / "docs" / "reproductions.md"


def _blocks():
    return dict(published.blocks_in(DOC.read_text(encoding="utf-8")))


def summary_verdicts(block: str) -> dict[str, str]:
    """{claim name: verdict cell} of the summary table's rows."""
    out = {}
    for line in block.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0].split(":", 1)[0]] = cells[-1]
    return out


def section_verdicts(block: str) -> dict[tuple[str, str], str]:
    """{(claim, comparison or "claim verdict"): verdict} of a section's comparisons table."""
    out = {}
    for line in block.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] not in ("claim", "---"):
            # "rule name: `method` vs `control`" (a rule name may hold a colon itself), or the
            # bold "claim verdict (all comparisons)" row.
            label = cells[1].split(": `", 1)[0].replace("*", "").strip()
            out[(cells[0], "claim verdict" if label.startswith("claim verdict") else label)] = cells[-1]
    return out


def _results():
    return {n: published.repro_result(n) for n in published.REPRO_NAMES}


@pytest.mark.parametrize("name", list(published.REPRO_NAMES))
def test_doc_verdicts_are_the_rules_applied_to_the_json(name):
    result = _results()[name]
    blocks = _blocks()
    in_summary = summary_verdicts(blocks["repro-summary"])
    names = [c["name"] for c in published.repro_claims(name)]
    if result is None:
        for claim in names:
            assert in_summary[claim].startswith("not run at this size"), (claim, in_summary[claim])
        assert "Not run at this size." in blocks[f"repro-{name}"]
        return
    claims.check_consistent(result)  # stored verdicts = rules applied to the stored series
    fresh = claims.recompute(result)
    assert [c["name"] for c in fresh] == names  # the JSON judged the claims the config states now
    in_section = section_verdicts(blocks[f"repro-{name}"])
    for claim in fresh:
        assert in_summary[claim["name"]] == claim["verdict"]
        assert in_section[(claim["name"], "claim verdict")] == claim["verdict"]
        for c in claim["comparisons"]:
            assert in_section[(claim["name"], c["rule"]["name"])] == c["verdict"]
        for stored in next(s for s in result["claims"] if s["name"] == claim["name"])["comparisons"]:
            configured = [dict(r) for c in published.repro_claims(name) if c["name"] == claim["name"]
                          for r in c["rules"]]
            assert stored["rule"] in configured, "rule changed after the run"


def _synthetic_result():
    import numpy as np

    rng = np.random.default_rng(0)
    control = rng.normal(3.0, 0.2, (3, 4, 8))
    series = {k: {str(s): {f"doc{d}": list(v[s, d]) for d in range(4)} for s in range(3)}
              for k, v in (("a/full@4L", control - 0.1), ("b/full@4L", control))}
    rule = {"name": "a vs b", "method": "a/full@4L", "control": "b/full@4L", "expect": "lower", "margin": 0.0}
    claim = {"name": "c", "source": "s", "claim": "a is lower", "rules": [rule]}
    return {"claims": verdicts.evaluate_claims([claim], series), "series": series}


def test_a_verdict_that_differs_from_its_rule_is_caught():
    result = _synthetic_result()
    claims.check_consistent(result)
    assert result["claims"][0]["verdict"] == "yes"
    softened = copy.deepcopy(result)
    softened["claims"][0]["verdict"] = "not distinguishable"
    with pytest.raises(ValueError, match="stored verdict"):
        claims.check_consistent(softened)
    changed = copy.deepcopy(result)
    for doc in changed["series"]["a/full@4L"].values():
        for d in doc:
            doc[d] = [x + 0.2 for x in doc[d]]  # the method now loses: the stored "yes" is wrong
    with pytest.raises(ValueError, match="stored verdict"):
        claims.check_consistent(changed)


def test_summary_parser_reads_the_rendered_table():
    from longctx_jax.eval import repro_report

    result = _synthetic_result()
    rule = result["claims"][0]["comparisons"][0]["rule"]
    claim = {"name": "c", "source": "s", "claim": "a is lower", "rules": [rule]}
    table = repro_report.summary_table([("x", result, [claim], "cmd"),
                                        ("y", None, [{**claim, "name": "d"}], "cmd")])
    assert summary_verdicts(table) == {"c": "yes", "d": "not run at this size (`cmd`)"}


def test_longrope_block_is_the_rule_applied_to_the_committed_blocks():
    block = _blocks()["repro-longrope"]
    if not published.LONGROPE.exists():
        assert block.startswith("Not run at this size.")
        return
    summary = published.load(published.LONGROPE)
    stored = published.load(published.LONGROPE_BLOCKS)
    assert stored["inputs"]["test_documents"] == summary["test_documents"]
    assert not set(summary["search_documents"]) & set(summary["test_documents"])  # held out
    fresh = longrope_claim.recompute(summary, stored["blocks"])
    assert fresh["verdict"] == summary["verdict"]
    for control, c in fresh["comparisons"].items():
        assert c == pytest.approx(summary["test"]["comparisons"][control], rel=1e-9, abs=1e-12)
    assert f"**Verdict: {fresh['verdict']['verdict']}**" in block
    configured = published.config_cli.load_config(
        f"{published.ROOT / 'configs' / 'longrope_search_smollm2.py'}:cpu16k").verdict_rule
    assert summary["verdict_rule"] == longrope_claim.check_rule(dict(configured)), "rule changed"
