"""The few MLflow registry operations promotion needs (tags, aliases, existence).

``promotion`` cannot import ``ml``, so these thin helpers live here. The probe
exists because MlflowClient retries a dead server for minutes; a CLI should say
"unreachable" after a few seconds instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx

from contract.errors import PrimerError
from contract.names import CHALLENGER_ALIAS, CHAMPION_ALIAS, CLIMATOLOGY_FAMILY, MODEL_NAME, PromotionStatus, Tag

if TYPE_CHECKING:  # MLflow is imported lazily: `primer --help` and `pin check` stay fast
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


class RegistryUnreachable(PrimerError):
    """MLflow did not answer; the message says where we looked, ``reason`` what went wrong."""

    exit_code = 3  # the CLI's "could not ask" status

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"MLflow at {public_uri(uri)} is unreachable ({reason})")
        self.uri = uri
        self.reason = reason


def public_uri(uri: str) -> str:
    """``uri`` without ``user:password@``: for PR bodies, ``/model`` and logs (MLflow accepts URL credentials)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def probe(uri: str, timeout: float = 3.0) -> None:
    """Raise :class:`RegistryUnreachable` unless the MLflow server at ``uri`` answers its health check."""
    if not uri.startswith(("http://", "https://")):
        return  # file:/sqlite: stores are local: nothing to reach
    try:
        r = httpx.get(uri.rstrip("/") + "/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise RegistryUnreachable(uri, f"{type(exc).__name__}: {exc}") from exc
    if r.status_code != 200:
        raise RegistryUnreachable(uri, f"HTTP {r.status_code} on /health")


def client(uri: str) -> MlflowClient:
    """An explicit client for the server at ``uri`` (tracking and registry): no process-global URI."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower() \
        or "does not exist" in str(exc).lower()


def get_version(c: MlflowClient, version: int, name: str = MODEL_NAME) -> ModelVersion | None:
    """The ModelVersion, or None when the model or the version does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version(name, str(version))
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def alias_version(c: MlflowClient, alias: str, name: str = MODEL_NAME) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(c.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def set_status(c: MlflowClient, version: int, status: PromotionStatus, name: str = MODEL_NAME) -> None:
    c.set_model_version_tag(name, str(version), Tag.PROMOTION_STATUS.value, status.value)


def status_of(c: MlflowClient, version: int, name: str = MODEL_NAME) -> str | None:
    mv = get_version(c, version, name)
    return None if mv is None else mv.tags.get(Tag.PROMOTION_STATUS.value)


def versions_with_status(c: MlflowClient, *statuses: PromotionStatus, name: str = MODEL_NAME) -> list[int]:
    wanted = {s.value for s in statuses}
    found = c.search_model_versions(f"name = '{name}'")
    return sorted(int(mv.version) for mv in found if mv.tags.get(Tag.PROMOTION_STATUS.value) in wanted)


@dataclass(frozen=True)
class SyncResult:
    version: int | None
    previous: int | None
    changed: bool
    message: str


def sync_champion(c: MlflowClient, pinned: int | None, name: str = MODEL_NAME) -> SyncResult:
    """Make alias ``champion`` mirror the pin and tag the version promoted (idempotent)."""
    previous = alias_version(c, CHAMPION_ALIAS, name)
    if pinned is None:
        return SyncResult(None, previous, False, "nothing pinned yet (version: null); champion alias left as is")
    mv = get_version(c, pinned, name)
    if mv is None:
        raise LookupError(f"pinned version {pinned} does not exist in registered model {name!r}")
    changed = False
    if previous != pinned:
        c.set_registered_model_alias(name, CHAMPION_ALIAS, str(pinned))
        changed = True
    if mv.tags.get(Tag.PROMOTION_STATUS.value) != PromotionStatus.PROMOTED.value:
        set_status(c, pinned, PromotionStatus.PROMOTED, name)
        changed = True
    # The challenger alias means "proposed, not yet serving"; once pinned it is stale.
    if alias_version(c, CHALLENGER_ALIAS, name) == pinned:
        c.delete_registered_model_alias(name, CHALLENGER_ALIAS)
        changed = True
    if not changed:
        msg = f"already in sync: alias {CHAMPION_ALIAS} = v{pinned} (promoted)"
    elif previous is None or previous == pinned:
        msg = f"alias {CHAMPION_ALIAS} -> v{pinned}, tagged promoted"
    else:
        msg = f"alias {CHAMPION_ALIAS} v{previous} -> v{pinned}, tagged promoted"
    return SyncResult(pinned, previous, changed, msg)


# Statuses of versions that were proposed or pinned at some point: never pruned.
_EVER_PROPOSED = {PromotionStatus.PROPOSED.value, PromotionStatus.PROMOTED.value,
                  PromotionStatus.SUPERSEDED.value, PromotionStatus.ROLLED_BACK.value}


def all_versions(c: MlflowClient, name: str = MODEL_NAME) -> list[ModelVersion]:
    """Every version of ``name``, page by page (a long-running lab registers thousands)."""
    found: list[ModelVersion] = []
    token = None
    while True:
        page = c.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def prunable_versions(c: MlflowClient, keep: set[int], keep_recent: int, name: str = MODEL_NAME) -> list[int]:
    """Versions of ``name`` safe to delete, oldest first: not in ``keep`` (e.g. every version the
    pin ever held), not among the ``keep_recent`` newest, without an alias, and never proposed or
    promoted (an open pull request names a proposed version)."""
    versions = all_versions(c, name)
    if not versions:
        return []
    newest = set(sorted(int(mv.version) for mv in versions)[-keep_recent:]) if keep_recent > 0 else set()
    # Searches do not fill in aliases; the registered model lists them all.
    aliased = {int(v) for v in c.get_registered_model(name).aliases.values()}
    return sorted(int(mv.version) for mv in versions
                  if int(mv.version) not in keep | newest | aliased
                  and mv.tags.get(Tag.PROMOTION_STATUS.value) not in _EVER_PROPOSED)


def delete_versions(c: MlflowClient, versions: list[int], name: str = MODEL_NAME) -> None:
    for version in versions:
        c.delete_model_version(name, str(version))


def recipe_family(recipe_json: str | None) -> str | None:
    """The family of a recipe (the ``recipe`` tag's JSON, ``Tag.RECIPE``); None when absent or unreadable."""
    import json

    try:
        family = json.loads(recipe_json or "").get("family")
    except (ValueError, AttributeError):
        return None
    return family if isinstance(family, str) else None


def is_climatology_recipe(recipe_json: str | None) -> bool:
    """True for a climatology recipe: the honest baseline, nothing simpler to roll back to."""
    return recipe_family(recipe_json) == CLIMATOLOGY_FAMILY
