"""Zero-downtime rollout of model versions.

With ``model_version=latest``, :class:`Rollout` checks the store every ``model_poll_s`` seconds
(with 0 never on its own) and at once on SIGHUP (``check_now``) for the version
``resolve_artifact`` names now: the newest complete version, folders whose name starts with
``.`` excluded. When that is not the version being served, it loads and verifies the artifact
and builds its networks on a worker thread, then warms a new engine up on that engine's own
compute thread: the event loop and the serving version carry on meanwhile. Then it switches:
requests that arrive from then on are pinned to the new version
(:meth:`service.state.ServiceState.pin`), requests already admitted finish on the old one,
whose engine is stopped once its last request is done (at the latest after
``request_timeout_s``); its memory is then released (two versions are resident only during a
switch).

A version that fails to load or warm up leaves the serving one in place: one log line, counted
in ``mdp_model_reload_failures_total``, and it is not tried again until its files change.
Rolling back is the same mechanism: hide the bad version (``mv v3 .v3``) so that the previous
one is the newest again, or pin ``MDP_MODEL_VERSION`` and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
import weakref
from pathlib import Path

from multidomain.artifact import MANIFEST_FILE, WEIGHTS_FILE, ArtifactError
from multidomain.store import resolve_artifact
from service.degrade import DegradePolicy
from service.engine import DomainModel, InferenceEngine
from service.model import ServedModel, load_served_model
from service.state import ServedVersion, ServiceState

__all__ = ["Rollout", "start_engine"]

logger = logging.getLogger("service")

_Signature = tuple[tuple[int, int], ...]


async def start_engine(state: ServiceState, path: Path | None = None) -> ServedVersion:
    """Load, verify and build the artifact at ``path`` (default: the settings' version) on a
    worker thread, then warm its engine up (on the engine's compute thread)."""
    model, networks = await asyncio.to_thread(load_served_model, state.settings, path)
    return await warm_up(state, model, networks)


async def warm_up(
    state: ServiceState, model: ServedModel, networks: dict[str, DomainModel]
) -> ServedVersion:
    """A started engine for ``networks``; stopped again if warming up fails."""
    settings = state.settings
    budgets = model.budgets
    engine = InferenceEngine(
        networks,
        state.metrics,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        torch_threads=settings.torch_threads,
        shed_late=settings.shed_late,
        policy=DegradePolicy(
            len(budgets),
            settings.request_timeout_s,
            settings.degrade_high,
            settings.degrade_low,
            settings.degrade_hold_ms / 1000.0,
            enabled=True,
        )
        if settings.degrade
        else None,
        budgets=budgets,
    )
    try:
        await engine.start()
    except BaseException:
        await engine.stop(0)
        raise
    return ServedVersion(model, engine)


class Rollout:
    """Watches the store and switches the served version; see the module's description."""

    def __init__(self, state: ServiceState) -> None:
        self._state = state
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Task[None]] = set()
        self._refused: dict[Path, _Signature] = {}
        self._lock = asyncio.Lock()

    @property
    def watching(self) -> bool:
        """Whether the store is checked: only when serving its ``latest`` version (a pinned
        version never changes), every ``model_poll_s`` seconds (or only on SIGHUP with 0)."""
        return self._state.settings.model_version == "latest"

    def activate(self, version: ServedVersion) -> None:
        """Serve ``version`` from now on; the previous one drains and is freed."""
        state = self._state
        previous = state.current
        state.set_current(version)
        model = version.model
        metrics = state.metrics
        metrics.set_model(
            model.name,
            model.version,
            "unknown" if model.budget is None else str(model.budget),
            model.sharing or "unknown",
            model.domains,
        )
        metrics.keep_versions(
            [model.version] + ([previous.version] if previous is not None else [])
        )
        metrics.model_resident.inc()
        weakref.finalize(model, metrics.model_resident.dec)
        if previous is None:  # first load, before readiness: a full pass is no pause
            gc.collect()
            gc.freeze()
            return
        logger.info(
            "switched: model %s version %s from %s (was version %s)",
            model.name,
            model.version,
            model.path,
            previous.version,
        )
        metrics.reloads.inc()
        drain = asyncio.get_running_loop().create_task(
            self._drain(previous), name=f"mdp-drain-{previous.version}"
        )
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)

    def start(self) -> None:
        """Start watching the store, when the settings ask for it."""
        if self.watching and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="mdp-rollout"
            )

    def check_now(self) -> None:
        """Check the store at once (SIGHUP); safe to call from a signal handler on the loop."""
        self._wake.set()

    async def close(self) -> None:
        """Stop watching; stop the engines of versions still draining."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for drain in list(self._drains):
            drain.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)

    async def check(self) -> bool:
        """Switch to the version the store names now, if it is not the one served and was not
        refused before; True when it switched."""
        async with self._lock:
            state = self._state
            current = state.current
            if current is None or state.draining:
                return False
            settings = state.settings
            try:
                path = await asyncio.to_thread(
                    resolve_artifact, settings.model_store, settings.model_name, "latest"
                )
            except ArtifactError as exc:
                logger.warning("model store check: %s; still serving %s", exc, current.version)
                return False
            if path == current.model.path:
                return False
            signature = _signature(path)
            if self._refused.get(path) == signature:
                return False
            logger.info("loading model version %s from %s", path.name, path)
            try:
                version = await start_engine(state, path)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._refused[path] = signature
                state.metrics.reload_failures.inc()
                reason = str(exc) if isinstance(exc, ArtifactError) else repr(exc)
                logger.error(
                    "refused model version %s: %s; still serving version %s",
                    path.name,
                    reason,
                    current.version,
                )
                return False
            if state.draining:  # shutting down meanwhile: never switch to it
                await version.engine.stop(0)
                return False
            self.activate(version)
            return True

    async def _watch(self) -> None:
        interval = self._state.settings.model_poll_s or None  # 0: on SIGHUP only
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: keep serving and keep watching
                logger.exception("model store check failed")

    async def _drain(self, version: ServedVersion) -> None:
        """Let the requests pinned to ``version`` finish, stop its engine, free its memory."""
        settings = self._state.settings
        started = time.monotonic()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(version.idle.wait(), timeout=settings.request_timeout_s + 1)
        finally:  # also when shutting down meanwhile
            await version.engine.stop(settings.shutdown_grace_s)
        name = version.version
        del version  # the last reference: its networks are freed now (no cycle holds them)
        gc.freeze()  # the new version's objects: out of the cyclic collector's passes
        await asyncio.to_thread(_return_freed_memory)
        logger.info("released model version %s after %.2f s", name, time.monotonic() - started)


def _return_freed_memory() -> None:
    """Hand the freed heap back to the system (glibc keeps it otherwise), so that the process's
    resident memory shows the old version gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _signature(path: Path) -> _Signature:
    """Sizes and modification times of a version's files: a refused version is tried again
    only once they change."""
    result = []
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        try:
            stat = (path / name).stat()
            result.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            result.append((0, -1))
    return tuple(result)
