"""Find a Hugging Face model id (`org/name`) in the local Hugging Face cache, offline.

The cache is the one huggingface_hub writes (https://huggingface.co/docs/huggingface_hub/guides/manage-cache):
`<cache>/models--<org>--<name>/refs/main` holds the commit of the default branch,
`<cache>/models--<org>--<name>/snapshots/<commit>/` its files (symlinks into `blobs/`). The lookup goes through
`huggingface_hub.snapshot_download(repo_id, local_files_only=True)`, so the hub is never contacted and a
snapshot that huggingface_hub knows to be incomplete is refused. The cache directory is the caller's, or
huggingface_hub's default `constants.HF_HUB_CACHE` (set by the `HF_HUB_CACHE` / `HF_HOME` environment
variables, else `~/.cache/huggingface/hub`), read at call time.
"""

from __future__ import annotations

from pathlib import Path

_SHOWN_CACHED = 10


def default_hub_cache() -> Path:
    """huggingface_hub's cache directory (HF_HUB_CACHE / HF_HOME, default ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_repo_id(spec: str) -> bool:
    """Whether `spec` is a syntactically valid Hub model id (`name` or `org/name`, no path syntax)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def find_snapshot(repo_id: str, cache_dir: str | Path | None = None) -> Path | None:
    """The cached snapshot directory of model `repo_id` (its `refs/main` commit), or None when not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    incomplete: tuple[type[Exception], ...] = ()
    try:
        from huggingface_hub.errors import IncompleteSnapshotError

        incomplete = (IncompleteSnapshotError,)
    except ImportError:  # older huggingface_hub
        pass
    try:
        path = snapshot_download(repo_id, repo_type="model", cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, *incomplete):
        return None
    return Path(path)


def cached_model_ids(cache_dir: str | Path | None = None) -> list[str]:
    """Model ids that have a folder in the cache (`models--org--name`), sorted; no file is read."""
    root = Path(cache_dir) if cache_dir is not None else default_hub_cache()
    if not root.is_dir():
        return []
    prefix = "models--"
    return sorted(p.name[len(prefix):].replace("--", "/") for p in root.iterdir() if p.name.startswith(prefix))


def not_cached_message(repo_id: str, cache_dir: str | Path | None = None) -> str:
    """Why `repo_id` could not be loaded from the cache: the cache path looked at and what it holds."""
    root = Path(cache_dir) if cache_dir is not None else default_hub_cache()
    where = "given" if cache_dir is not None else "HF_HUB_CACHE / HF_HOME, default ~/.cache/huggingface/hub"
    folder = root / ("models--" + repo_id.replace("/", "--"))
    cached = cached_model_ids(root)
    if cached:
        shown = ", ".join(cached[:_SHOWN_CACHED]) + (" ..." if len(cached) > _SHOWN_CACHED else "")
        holds = f"models cached there: {shown}"
    else:
        holds = "no models are cached there"
    return (
        f"Hugging Face model {repo_id!r} is not in the local Hugging Face cache {root} ({where}): no complete "
        f"snapshot under {folder} (dynaspec never downloads from the hub; {holds})"
    )
