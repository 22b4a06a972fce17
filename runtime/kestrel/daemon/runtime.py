"""The daemon: one asyncio loop tying sensors, triggers, the policy, actions and the ledger together.

:class:`Daemon` receives everything it needs (config, ledger, policy engine, pin
factory), so tests run it in-process; :mod:`kestrel.daemon.main` builds those from
a state directory for ``kestrel run``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.clock import StepWatch
from .._internal.fsutil import atomic_write, ensure_private_dir
from .._internal.paths import StateLayout
from .._internal.strictjson import loads_strict
from ..errors import KestrelError, UsageError
from .actions import Actions, Outcome
from .admin import OtaService
from .ask import AskHost
from .calendar import CalendarStore
from .config import DeviceConfig
from .control import ControlServer, resolve_group
from .effects import JOURNAL_FILE, EffectTracker, InDoubtScan, Journal, read_journal, write_journal
from .handlers import ControlHandlers
from .hardware import Hardware
from .links import Links
from .notify import Notifier, run_watchdog, watchdog_interval
from .outbox import Outbox
from .pipeline import Pipeline, QueuedAppends
from .schedules import run_schedules
from .triggers import Proposal, TriggerEngine

if TYPE_CHECKING:
    from ..identity.bls_store import BLSKey
    from ..identity.keys import Signer
    from ..io.gpio import PinFactory
    from ..ledger import Ledger
    from ..policy import PolicyEngine

__all__ = ["Daemon"]

log = logging.getLogger("kestrel.daemon")

QUARANTINE_KEEP = 100
QUARANTINE_RECORDS_PER_S = 10
MAX_LOOP_LAG_S = 5.0
POLICY_RECHECK_S = 1.0  # other processes' bundle applies are noticed within this (ours at once)
JOURNAL_INTERVAL_S = 5.0  # how often the effects journal's watermark is saved (when it moved)
CLOCK_CHECK_S = 1.0  # how often a wall-clock step is looked for (it is recorded once: clock.stepped)


class Daemon(ControlHandlers):
    """The device runtime: builds its parts from what it is given and runs them on one loop.

    The control-request handlers (``control_*``) are :class:`~kestrel.daemon.handlers.ControlHandlers`.
    """

    def __init__(
        self,
        *,
        config: DeviceConfig,
        state_dir: str | os.PathLike[str],
        ledger: Ledger,
        factory: PinFactory,
        agent_id: str,
        policy: PolicyEngine | None = None,
        board: str = "sim",
        load_config: Callable[[], DeviceConfig] | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        freeze_gc: bool = False,
        signer: Signer | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        bls_key: BLSKey | None = None,
    ) -> None:
        self.config = config
        self.state = StateLayout(state_dir)
        self.ledger = ledger
        self.decision_log: QueuedAppends | None = None
        if policy is None:  # the normal case: the engine records decisions as config.audit says
            from ..ota.source import policy_source
            from ..policy import PolicyEngine

            self.decision_log = QueuedAppends(ledger, queued=config.audit.decisions == "batched")
            policy = PolicyEngine(
                self.state.root,
                self.decision_log,
                source=policy_source(self.state.root),
                recheck_s=POLICY_RECHECK_S,
                clock=clock,
                monotonic=monotonic,
            )
        self.policy = policy
        self.factory = factory
        self.agent_id = agent_id
        self.board = board
        self.load_config = load_config
        self.notifier = notifier or Notifier()
        self.clock = clock  # wall time: what records, windows and cron schedules are about
        self.monotonic = monotonic  # everything that measures a duration: cooldowns, intervals, deadlines
        self.steps = StepWatch(wall=clock, monotonic=monotonic)
        self.freeze_gc = freeze_gc
        self.values: dict[str, Any] = {}
        self.triggers = TriggerEngine(config.triggers)
        self.hardware: Hardware | None = None
        self.models: Any = None  # modelsensors.ModelFeeds while the config has models
        self.effects = EffectTracker(lambda: ledger.size)
        self.indoubt: dict[str, Any] = {"actions": 0, "mail": 0, "scanned": 0, "previous_stop": None}
        self._journal_path = self.state.data / JOURNAL_FILE
        self._journal: Journal | None = None
        self._accounted = False  # the last run's in-doubt intents are recorded (only then may a stop be clean)
        self.outbox = Outbox(
            self.state.data / "outbox", smtp=config.smtp, config=config.outbox, record=self.record, effects=self.effects
        )
        self.calendar = CalendarStore(self.state.data / "calendar")
        self.actions = Actions(
            config=lambda: self.config,
            hardware=self._hw,
            outbox=self.outbox,
            calendar=self.calendar,
            clock=clock,
            authorize=policy.decide,
        )
        self.links = Links(
            state_dir=self.state.root,
            ledger=ledger,
            signer=signer,
            sync_config=config.sync,
            policy=policy,
            bls_key=bls_key,
        )
        self.actions.register("agent.send", self._agent_send)
        self.ota = OtaService(
            state_dir=self.state.root,
            ledger=ledger,
            policy=policy,
            healthy=self._ota_healthy,
            on_recorded=self._appended,
            clock=clock,
            max_bundle=lambda: self.config.ota.max_bundle,
        )
        self.pipeline = Pipeline(
            policy=policy,
            ledger=ledger,
            actions=self.actions,
            queue_size=config.limits.action_queue,
            workers=config.limits.action_workers,
            on_recorded=self._appended,
            decision_log=self.decision_log,
            effects=self.effects,
        )
        self.pipeline.quorum = self.links.quorum_gate
        self.asks = AskHost(
            state_dir=self.state.root, ledger=ledger, policy=policy, pipeline=self.pipeline, appended=self._appended
        )
        self.control = ControlServer(
            self.state.run / "control.sock",
            self,
            group_gid=resolve_group(config.control.group, source=config.source),
            record=self.record,
        )
        self.ui: Any = None  # kestrel.daemon.ui.server.UiServer while the config has a ui: section
        self.counters = {
            "events": 0,
            "trigger_faults": 0,
            "quarantined": 0,
            "commands": 0,
            "reloads": 0,
            "reload_failures": 0,
            "clock_steps": 0,
        }
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._new_records = asyncio.Event()
        self._quarantine_window = (0.0, 0)
        self._started = time.monotonic()
        self._reload_lock = asyncio.Lock()
        self.last_reload_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _hw(self) -> Hardware:
        if self.hardware is None:
            raise KestrelError("the daemon's hardware is not running (starting up or reloading)")
        return self.hardware

    async def start(self) -> None:
        # data/ first, 0700: ensure_private_dir(data/sync) etc. would create it with the umask's mode
        ensure_private_dir(self.state.data)
        await self._account_in_doubt()  # before any new work: what the last run left open
        self._spawn(self._keep_journal(), "effects-journal")
        self._spawn(self._watch_clock(), "clock")
        self.pipeline.start()
        await self._start_hardware(self.config)
        self._spawn(self.outbox.run(), "outbox")
        self._spawn(
            run_schedules(
                lambda: self.config,
                self._schedule_fire,
                clock=self.clock,
                values=lambda: self.values,
                monotonic=self.monotonic,
            ),
            "schedules",
        )
        self._spawn(self._watch_drop_dir(), "ota-drop")
        await self.control.start()
        if self.config.ui is not None:  # the web UI's code is imported only when the config turns it on
            from .ui.server import UiServer

            ui = self.config.ui
            self.ui = UiServer(self, listen_host=ui.host, listen_port=ui.port, session_s=ui.session_s)
            await self.ui.start()
        interval = watchdog_interval()
        if interval is not None:
            self._spawn(run_watchdog(self.notifier, interval, self.unhealthy), "watchdog")
        if self.freeze_gc:  # start-up objects live forever: keep them out of the collector's way (shorter pauses)
            gc.freeze()
        self.notifier.ready(f"running; {len(self.config.sensors)} sensors, board {self.board}")
        log.info(
            "running as %s on board %s with %s (%d sensors, %d triggers); control socket %s",
            self.agent_id,
            self.board,
            self.config.source,
            len(self.config.sensors),
            len(self.config.triggers),
            self.control.path,
        )
        if getattr(self.policy, "policy", True) is None:
            log.warning(
                "no policy is installed: every action will be denied (default-deny) and recorded; "
                "install one signed by the owner: kestrel set-policy FILE (docs/policy.md)"
            )

    async def _account_in_doubt(self) -> None:
        """Record ``action.indoubt`` / ``outbox.indoubt`` for every intent the last run left without an
        outcome, found by scanning the ledger from the effects journal's watermark (docs/state-dir.md)."""
        loop = asyncio.get_running_loop()
        journal = await loop.run_in_executor(None, read_journal, self._journal_path)
        first = getattr(self.ledger, "first_seq", 0)
        if journal is not None and journal.clean:
            scan = InDoubtScan()
            previous = "clean"
        else:
            start = max(journal.scan_from, first) if journal is not None else first
            scan = InDoubtScan(in_run=journal is not None)
            previous = "crashed" if journal is not None else "unknown"
            await loop.run_in_executor(None, lambda: scan.feed(self.ledger.records(since_seq=start)))
            if scan.finished_mail:
                await loop.run_in_executor(None, self.outbox.settle, scan.finished_mail)
        why = "the daemon stopped (crash or power loss) after the decision and before its outcome was recorded"
        resend = "the daemon stopped while the relay had the message; it is sent again with the same Message-ID"
        records = [("action.indoubt", {**i.body, "decision": i.seq, "reason": why}) for i in scan.actions]
        records += [
            (
                "outbox.indoubt",
                {**{k: v for k, v in i.body.items() if v is not None}, "intent": i.seq, "reason": resend},
            )
            for i in scan.mail
        ]
        await asyncio.gather(*(self.record(kind, body) for kind, body in records))  # in order, sharing commits
        self.indoubt = {
            "actions": len(scan.actions),
            "mail": len(scan.mail),
            "scanned": scan.scanned,
            "previous_stop": previous,
        }
        await self.record(
            "daemon.started",
            {
                "pid": os.getpid(),
                "previous_stop": previous,
                "indoubt_actions": len(scan.actions),
                "indoubt_mail": len(scan.mail),
                "scanned": scan.scanned,
            },
        )
        if scan.actions or scan.mail:
            log.warning(
                "the last run stopped with %d actions and %d mail deliveries in doubt (recorded as "
                "action.indoubt / outbox.indoubt; `kestrel audit log --kind 'action.indoubt'`)",
                len(scan.actions),
                len(scan.mail),
            )
        await self._save_journal(Journal(self.ledger.size, clean=False))
        self._accounted = True

    async def _save_journal(self, journal: Journal) -> None:
        if journal == self._journal:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, write_journal, self._journal_path, journal)
            self._journal = journal
        except (OSError, KestrelError) as exc:  # the older watermark stays: a later start scans a bit more
            log.error("could not save the effects journal %s: %s", self._journal_path, exc)

    async def _keep_journal(self) -> None:
        while True:
            await asyncio.sleep(JOURNAL_INTERVAL_S)
            await self._save_journal(Journal(self.effects.watermark(), clean=False))

    async def _watch_clock(self) -> None:
        """Record each wall-clock step once (``clock.stepped {old, new, delta}``); durations never see it."""
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            step = self.steps.check()
            if step is None:
                continue
            self.counters["clock_steps"] += 1
            log.warning(
                "the wall clock stepped by %+.3f s (from %.3f to %.3f); deadlines, cooldowns and rate limits "
                "are unaffected",
                step.delta,
                step.old,
                step.new,
            )
            try:
                await self.record("clock.stepped", step.body())
            except Exception as exc:
                log.error("could not record clock.stepped: %s", exc)

    async def _stopped_cleanly(self) -> None:
        """After the last outcome is on flash: mark the stop clean, so the next start scans nothing."""
        if not self._accounted:  # start-up failed before the last run's open intents were recorded
            return
        if self.effects.open:
            log.warning(
                "stopping with %d actions or deliveries unfinished: the next start reports them in doubt",
                self.effects.open,
            )
            await self._save_journal(Journal(self.effects.watermark(), clean=False))
            return
        await self.record("daemon.stopped", {"pid": os.getpid()})
        await self._save_journal(Journal(self.ledger.size, clean=True))

    async def _start_hardware(self, cfg: DeviceConfig) -> None:
        hw = Hardware(cfg, factory=self.factory, sink=self, agent_id=self.agent_id, ota_topic=cfg.ota.mqtt_topic)
        await hw.start()
        if hw.bridge is not None:
            self.links.sync_config = cfg.sync
            try:
                await self.links.start(hw.bridge)
            except BaseException:
                await self.links.stop()
                await hw.stop()
                raise
        try:
            self.models = await self._start_models(cfg)
        except BaseException:
            await self._stop_hardware(hw)
            raise
        self.hardware = hw

    async def _start_models(self, cfg: DeviceConfig) -> Any:
        """Model sensors (docs/device-config.md, ``models:``); inference is imported only when configured."""
        if not cfg.models:
            return None
        from .modelsensors import ModelFeeds

        options, profile = None, getattr(self.factory, "profile", None)
        if profile is not None:
            from ..inference.options import RuntimeOptions

            options = RuntimeOptions.from_profile(profile)
        feeds = ModelFeeds(
            cfg.models, state_dir=self.state.root, report=self.sensor_value, fault=self.sensor_fault, options=options
        )
        await feeds.start(self.values)
        return feeds

    async def _stop_hardware(self, hw: Hardware) -> None:
        if self.models is not None:
            models, self.models = self.models, None
            await models.stop()
        await self.links.stop()  # before the bridge closes: sync persists its acknowledged offset
        await hw.stop()

    async def run(self) -> None:
        """Start, run until :meth:`request_stop`, then shut down cleanly."""
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._spawn_bg(self.reload())

    async def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        if self.ui is not None:
            await self.ui.close()
        await self.control.close()
        if self.hardware is not None:
            await self._stop_hardware(self.hardware)
            self.hardware = None
        smtp = self.outbox.smtp
        await self.outbox.drain(timeout=(smtp.timeout_s if smtp else 0.0) + 5.0)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.pipeline.stop()
        self.asks.close()
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.ledger.flush)  # outcomes queued without a waiter land now
        try:
            await self._stopped_cleanly()
        except Exception as exc:
            log.error("could not record the clean stop: %s", exc)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; a config that does not parse or start keeps the old one running."""
        if self.load_config is None:
            raise UsageError("this daemon was started without a config file to re-read")
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, self.load_config)
                resolve_group(new.control.group, source=new.source)
            except KestrelError as exc:
                return self._reload_failed(exc.message if exc.hint is None else str(exc))
            old_cfg, old_triggers, old_hw = self.config, self.triggers, self.hardware
            self.hardware = None
            if old_hw is not None:
                await self._stop_hardware(old_hw)
            self.config, self.triggers = new, TriggerEngine(new.triggers)  # first readings meet the new rules
            try:
                await self._start_hardware(new)
            except KestrelError as exc:
                log.error("new config could not start (%s); restarting the old one", exc.message)
                self.config, self.triggers = old_cfg, old_triggers
                try:
                    await self._start_hardware(old_cfg)
                except KestrelError as again:
                    log.error("the old config could not restart either: %s", again.message)
                return self._reload_failed(exc.message)
            self.outbox.smtp, self.outbox.config = new.smtp, new.outbox
            self.counters["reloads"] += 1
            self.last_reload_error = None
            self.notifier.ready("reloaded")
            log.info("reloaded %s (%d sensors, %d triggers)", new.source, len(new.sensors), len(new.triggers))
            return {"reloaded": True, "config": new.source}

    def _reload_failed(self, why: str) -> dict[str, Any]:
        self.counters["reload_failures"] += 1
        self.last_reload_error = why
        log.error("reload refused, keeping the running config: %s", why)
        self.notifier.ready("running (reload refused)")
        return {"reloaded": False, "error": why}

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    def _spawn_bg(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- health ------------------------------------------------------------------------------
    def unhealthy(self, loop_lag: float = 0.0) -> str | None:
        if loop_lag > MAX_LOOP_LAG_S:
            return f"event loop stalled for {loop_lag:.1f}s"
        if not self.pipeline.alive:
            return "action pipeline stopped"
        if self.pipeline.ledger_error:
            return self.pipeline.ledger_error
        if self.decision_log is not None and self.decision_log.error:
            return self.decision_log.error
        if self.hardware is None and not self._reload_lock.locked():
            return "no sensors or actuators are running (a reload failed to restart them)"
        if self.hardware is not None and (why := self.hardware.unhealthy()):
            return why
        for t in self._tasks:
            if t.done() and not t.cancelled():
                return f"task {t.get_name()} stopped"
        return None

    # -- records -----------------------------------------------------------------------------
    async def record(self, kind: str, body: dict[str, Any]) -> Any:
        # shielded: a caller that is cancelled (shutdown) must not withdraw a record already handed over
        receipt = await asyncio.shield(self.ledger.append_async(kind, body))
        self._appended()
        return receipt

    def _record_soon(self, kind: str, body: dict[str, Any]) -> None:
        async def go() -> None:
            try:
                await self.record(kind, body)
            except Exception as exc:
                log.error("could not record %s: %s", kind, exc)

        self._spawn_bg(go())

    def _appended(self) -> None:
        self._new_records.set()

    # -- Sink: readings from the hardware ----------------------------------------------------
    def sensor_value(self, sensor: str, value: Any) -> None:
        self.counters["events"] += 1
        self.values[sensor] = value
        if self.models is not None:
            self.models.on_reading(sensor, self.values)
        proposals, faults = self.triggers.on_sensor(sensor, self.values, self.monotonic())  # cooldowns: durations
        for f in faults:
            self.counters["trigger_faults"] += 1
            if self.counters["trigger_faults"] <= 10 or self.counters["trigger_faults"] % 1000 == 0:
                log.warning("trigger %s: %s", f.trigger, f.message)
        for p in proposals:
            self.pipeline.submit(p)

    def sensor_fault(self, sensor: str, state: str, detail: dict[str, Any]) -> None:
        log.warning("sensor %s is %s %s", sensor, state, detail or "")
        self._record_soon("sensor.fault", {"sensor": sensor, "state": state, **detail})

    def bad_payload(self, sensor: str, topic: str, payload: bytes, reason: str) -> None:
        """Count, log and quarantine a payload a sensor could not read (bounded in files and records)."""
        self.counters["quarantined"] += 1
        digest = hashlib.sha256(payload).hexdigest()
        log.warning(
            "quarantined a bad payload on %s for %s (%d bytes, sha256 %s): %s",
            topic,
            sensor,
            len(payload),
            digest[:16],
            reason,
        )
        now = time.monotonic()
        start, n = self._quarantine_window
        if now - start >= 1.0:
            start, n = now, 0
        self._quarantine_window = (start, n + 1)
        if n >= QUARANTINE_RECORDS_PER_S:
            return
        if not payload:  # dropped by the bridge unseen: nothing to keep but the facts
            meta = {
                "sensor": sensor,
                "topic": topic,
                "reason": reason[:200],
                "bytes": 0,
                "quarantined_total": self.counters["quarantined"],
            }
            self._record_soon("mqtt.quarantined", meta)
            return
        name = f"{time.time_ns()}-{digest[:16]}.bin"
        meta = {
            "sensor": sensor,
            "topic": topic,
            "reason": reason[:200],
            "bytes": len(payload),
            "sha256": digest,
            "quarantined_total": self.counters["quarantined"],
        }
        self._spawn_bg(self._quarantine(name, payload[: 1 << 20], meta))

    async def _quarantine(self, name: str, payload: bytes, meta: dict[str, Any]) -> None:
        qdir = self.state.data / "quarantine"

        def write() -> None:
            ensure_private_dir(qdir)
            atomic_write(qdir / name, payload)
            files = sorted(qdir.glob("*.bin"))
            for old in files[:-QUARANTINE_KEEP]:
                old.unlink(missing_ok=True)

        try:
            await asyncio.get_running_loop().run_in_executor(None, write)
            meta["file"] = name
        except KestrelError as exc:
            log.error("could not write quarantine file: %s", exc.message)
        try:
            await self.record("mqtt.quarantined", meta)
        except Exception as exc:
            log.error("could not record mqtt.quarantined: %s", exc)

    def mqtt_command(self, topic: str, payload: bytes) -> None:
        """A JSON command ``{"id", "action", "args"}`` on the commands topic: same path as `kestrel call`."""
        self.counters["commands"] += 1
        try:
            msg = loads_strict(payload)
            if not (
                isinstance(msg, dict) and isinstance(msg.get("action"), str) and isinstance(msg.get("args", {}), dict)
            ):
                raise ValueError('expected {"action": NAME, "args": {...}}')
        except ValueError as exc:  # StrictJsonError is one
            self.bad_payload("commands", topic, payload, f"bad command: {exc}")
            return
        self._spawn_bg(self._run_command(topic, msg))

    async def _run_command(self, topic: str, msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": msg.get("id"), "action": msg["action"]}
        try:
            reply["result"] = await self.pipeline.call(Proposal(msg["action"], msg.get("args", {}), f"mqtt:{topic}"))
            reply["ok"] = True
        except KestrelError as exc:
            reply.update(ok=False, error={"code": getattr(exc, "code", "failed"), "message": exc.message})
        results = self.config.mqtt.results_topic if self.config.mqtt else None
        if results and self.hardware is not None:
            try:
                await self.hardware.mqtt_publish(results, json.dumps(reply, default=str).encode(), qos=1, retain=False)
            except KestrelError as exc:
                log.warning("could not publish the command result: %s", exc.message)

    def ota_bundle(self, payload: bytes, source: str) -> None:
        self._spawn_bg(self.ota.apply_message(payload, source=source))

    def _ota_healthy(self) -> str | None:
        """What an OTA health check needs: the pipeline and the ledger working (not every sensor)."""
        if not self.pipeline.alive:
            return "action pipeline stopped"
        return self.pipeline.ledger_error or (self.decision_log.error if self.decision_log else None)

    async def _watch_drop_dir(self) -> None:
        """Scan ``ota.drop_dir`` (of the current config; none: idle) every ``ota.poll`` seconds."""
        while True:
            ota = self.config.ota
            if ota.drop_dir:
                drop = Path(ota.drop_dir)
                await self.ota.scan(drop if drop.is_absolute() else self.state.root / drop)
            await asyncio.sleep(ota.poll_s)

    async def _agent_send(self, args: dict[str, Any]) -> Outcome:
        reply = await self.links.action_send(args)
        return Outcome(reply, dict(reply))

    def _schedule_fire(self, p: Proposal) -> None:
        self.pipeline.submit(p)
