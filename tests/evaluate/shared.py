"""Locates ../shared/data beside the repository, also from a git worktree of it (beside the main checkout)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _main_checkout(root: Path) -> Path:
    """The main checkout of the repository: `root` itself, or the one a worktree's `.git` file points into."""
    git = root / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):
        gitdir = Path(git.read_text().split(":", 1)[1].strip())
        if gitdir.parent.name == "worktrees":  # <main>/.git/worktrees/<name>
            return gitdir.parent.parent.parent
    return root


def shared_data(*parts: str) -> Path:
    """The path of `parts` under ../shared/data (the first that exists; the plain one when none does)."""
    candidates = [base / ".." / "shared" / "data" / Path(*parts) for base in (ROOT, _main_checkout(ROOT))]
    return next((path for path in candidates if path.exists()), candidates[0])
