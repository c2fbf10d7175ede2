"""components.release on a real git repository: a release commit holds only the release files, the tag
is reused by a re-run on the same commit, a stale tag elsewhere is a clear error, and a failed
registration's tag can be taken back."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.errors import EdgepipeError
from components.release import commit_and_tag, delete_tag, locked_md5_at, release_files, tag_commit, tag_name
from conftest import GIT, run


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    run(["git", "init", "-q", "-b", "main"], tmp_path)
    (tmp_path / "params.yaml").write_text("model: {}\n")
    (tmp_path / "notes.txt").write_text("user's work in progress\n")
    run(["git", "add", "params.yaml"], tmp_path)
    run([*GIT, "commit", "-qm", "start"], tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.dvc").write_text("outs:\n- md5: abc.dir\n  path: raw\n")
    (tmp_path / "data" / ".gitignore").write_text("/raw\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "validation.json").write_text("{}\n")
    lock = "stages:\n  export:\n    outs:\n    - path: models/export/model_int8.tflite\n      md5: abc123\n"
    (tmp_path / "dvc.lock").write_text(lock)
    return tmp_path


def test_release_commit_holds_the_release_files_only_and_is_tagged(repo):
    run(["git", "add", "notes.txt"], repo)  # staged by the user: must not ride along
    files = release_files(repo, repo / "params.yaml", repo / "data" / "raw")
    assert files == ["data/.gitignore", "data/raw.dvc", "dvc.lock", "metrics", "params.yaml"]
    tag = tag_name("{model}@v{version}", "digits", 3)
    release = commit_and_tag(repo, files, tag, "Release digits@v3")
    assert tag == "digits@v3" and release.created
    assert tag_commit(repo, tag) == release.commit
    committed = run(["git", "show", "--name-only", "--format=", f"{tag}^{{commit}}"], repo).stdout.split()
    assert sorted(committed) == ["data/.gitignore", "data/raw.dvc", "dvc.lock", "metrics/validation.json"]
    assert "A  notes.txt" in run(["git", "status", "--porcelain"], repo).stdout  # still only staged
    assert locked_md5_at(repo, tag, "models/export/model_int8.tflite") == "abc123"


def test_a_rerun_on_the_same_commit_reuses_the_tag_and_a_stale_tag_is_refused(repo):
    files = release_files(repo, repo / "params.yaml", repo / "data" / "raw")
    first = commit_and_tag(repo, files, "m@v1", "Release m@v1")
    again = commit_and_tag(repo, files, "m@v1", "Release m@v1")
    assert again.commit == first.commit and not again.created
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    with pytest.raises(EdgepipeError, match=r"git tag m@v1 already exists on commit .* verify-release"):
        commit_and_tag(repo, files, "m@v1", "Release m@v1")
    delete_tag(repo, "m@v1")
    assert tag_commit(repo, "m@v1") is None
    assert commit_and_tag(repo, files, "m@v1", "Release m@v1").created


def test_unknown_revision_and_output_are_clear_errors(repo):
    files = release_files(repo, repo / "params.yaml", repo / "data" / "raw")
    commit_and_tag(repo, files, "m@v1", "Release m@v1")
    with pytest.raises(EdgepipeError, match="no output models/other.tflite"):
        locked_md5_at(repo, "m@v1", "models/other.tflite")
    with pytest.raises(EdgepipeError, match="no dvc.lock in that revision"):
        locked_md5_at(repo, "m@v1~1", "models/export/model_int8.tflite")
