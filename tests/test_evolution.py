"""Pattern usage, training gaps and the usage's trend over a checkout's git history."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from qi_expert.core.config import ROOT, compose_conf
from qi_expert.data import evolution, extract, revisions

SAMPLE = ROOT / "data/sample/typescript"


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True, capture_output=True)


def test_usage_gaps_and_the_trend_over_two_commits(tmp_path, monkeypatch):
    """The sample corpus without its config app, then with it: config management emerges."""
    repo = tmp_path / "repo"
    corpus = repo / "typescript"
    shutil.copytree(SAMPLE, corpus, ignore=shutil.ignore_patterns("config-example"))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "without the config app")
    shutil.copytree(SAMPLE / "app/config-example", corpus / "app/config-example")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "the config app")

    cfg = compose_conf().extract
    records, _ = extract.extract_corpus(corpus, cfg)
    used = evolution.usage(records)
    assert set(used) == set(evolution.patterns.PATTERN_TYPES) and used["result_creation"]["implementation"] > 0
    gaps = evolution.gaps(records, [{"pattern_types": ["result_creation"]}] * 3, minimum=2)
    assert {g["pattern"] for g in gaps} >= {"config_management", "cache_patterns"}  # no benchmark task asks for them
    assert "result_creation" not in {g["pattern"] for g in gaps}

    commits = revisions.sampled_commits(corpus, 5)
    assert len(commits) == 2
    counted = []
    count = lambda tree: counted.append(tree) or evolution.counts_of(extract.extract_corpus(tree, cfg)[0])  # noqa: E731
    points = evolution.history(corpus, commits, count, "test", log=lambda line: None)
    assert [p["commit"] for p in points] == [c["commit"] for c in commits] and points[-1]["records"] == len(records)
    trend = evolution.trends(points, threshold=0.005)
    assert trend["config_management"]["last"] > trend["config_management"]["first"]
    assert trend["config_management"]["trend"] == "emerging", trend["config_management"]
    # A rerun reads each commit's counts from the cache: nothing is extracted again.
    assert evolution.history(corpus, commits, count, "test", log=lambda line: None) == points and len(counted) == 2

    # What is new since the last run: the first run remembers the newest commit; a run after a
    # new commit reports what it added.
    monkeypatch.setenv("QI_CACHE_DIR", str(tmp_path / "cache"))
    first = evolution.since_last(corpus, points[0])  # a run that ended on the first commit
    assert first == {"last": None, "head": commits[0]["commit"]}
    new = evolution.since_last(corpus, points[-1])
    assert new["last"] == commits[0]["commit"] and new["head"] == commits[-1]["commit"]
    assert new["records"] == points[-1]["records"] - points[0]["records"] > 0
    assert new["by_pattern"]["config_management"] > 0
    assert evolution.since_last(corpus, points[-1])["by_pattern"] == {}  # nothing new the next time
