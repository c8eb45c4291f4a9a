"""Every results JSON says when and from which code it was measured."""

import datetime

from longctx_jax.provenance import provenance


def test_provenance_names_time_commit_and_dirty_state():
    record = provenance()
    assert set(record) == {"measured_utc", "git_commit", "git_dirty"}
    when = datetime.datetime.fromisoformat(record["measured_utc"])
    assert when.tzinfo is not None and abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60
    commit = record["git_commit"]
    assert commit == "unknown" or (len(commit) == 40 and int(commit, 16) >= 0)
    assert record["git_dirty"] in (True, False, None)
