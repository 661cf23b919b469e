"""Which version `primer rollback` picks, from a real git history of the pin file."""

from __future__ import annotations

from pathlib import Path

from contract.names import MODEL_NAME, PIN_PATH
from contract.pin import write_pin
from primer.promotion_commands import previous_version
from promotion.gitops import commit_pin, git, pin_history


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    git("init", "-q", "-b", "main", str(repo))
    git("config", "user.name", "t", cwd=repo)
    git("config", "user.email", "t@t", cwd=repo)
    (repo / PIN_PATH).parent.mkdir(parents=True)
    write_pin(repo / PIN_PATH, None)
    git("add", PIN_PATH, cwd=repo)
    git("commit", "-q", "-m", "nothing pinned yet", cwd=repo)
    return repo


def _promote(repo: Path, v: int) -> None:
    commit_pin(repo, PIN_PATH, v, f"Promote {MODEL_NAME} to v{v}")


def _roll_back(repo: Path, frm: int, to: int) -> None:
    commit_pin(repo, PIN_PATH, to, f"Roll back {MODEL_NAME} from v{frm} to v{to}")


def _target(repo: Path, current: int) -> int | None:
    return previous_version(pin_history(repo, PIN_PATH), current)


def test_rollback_goes_to_the_version_pinned_before(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    for v in (1, 2, 3):
        _promote(repo, v)
    assert _target(repo, 3) == 2


def test_rollback_skips_versions_already_rolled_back_from(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    for v in (1, 2, 3):
        _promote(repo, v)
    _roll_back(repo, 3, 2)
    assert _target(repo, 2) == 1  # not back to v3
    _roll_back(repo, 2, 1)
    assert _target(repo, 1) is None  # nothing left that was not rolled back from


def test_a_version_re_promoted_after_a_rollback_is_a_rollback_target_again(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _promote(repo, 1)
    _promote(repo, 2)
    _roll_back(repo, 2, 1)
    _promote(repo, 2)  # fixed and reviewed again
    _promote(repo, 3)
    assert _target(repo, 3) == 2


def test_a_git_revert_of_a_promotion_counts_as_rolling_back_from_it(tmp_path: Path) -> None:
    # The pin file's own comment offers `git revert` as the other way to roll back.
    repo = _repo(tmp_path)
    for v in (1, 2, 3):
        _promote(repo, v)
    git("revert", "--no-edit", "HEAD", cwd=repo)  # v3 -> v2
    assert _target(repo, 2) == 1  # never back to the reverted v3


def test_a_merged_demotion_counts_as_a_rollback(tmp_path: Path) -> None:
    """After `primer monitor`'s demotion of v2 back to v1 is merged, v2 is no rollback target."""
    from contract.names import demotion_title

    repo = _repo(tmp_path)
    for v in (1, 2):
        _promote(repo, v)
    commit_pin(repo, PIN_PATH, 1, demotion_title(2, 1))
    assert _target(repo, 1) is None
    _promote(repo, 3)
    assert _target(repo, 3) == 1
