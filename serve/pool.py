"""The python engine (the default): worker processes (serve/worker.py) under the front
door's event loop, a dynamic batcher per model, no JVM.

- Workers: one per GPU, else one per core (serve/config.py), each a process holding its
  model; a model's workers share one queue. An idle worker takes what is queued, up to
  the batch size; a request alone waits at most the batch delay for company.
- Each batch tells its worker how many torch threads to use: the cores shared among the
  workers busy at that moment (a lone request gets every core, a full server one each).
- Failures: a batch over SAGEMAKER_MODEL_SERVER_TIMEOUT gets 504 and its worker is
  replaced; a worker that dies (killed, out of memory) costs only the requests it held,
  which get a 503 that says so, and is started again; while a model has no worker up
  (restarting, failing to load again), a queued request gets a 503 after waiting
  SAGEMAKER_MODEL_SERVER_TIMEOUT; nothing ends the container but a real-time model that
  cannot load at all.
- Bodies travel to the worker as bytes over a socket pair, or as a spooled file's path
  when large (serve/wire.py): the front door never holds a large body.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import os
import shutil
import signal
import socket
import sys
import time

from byoc import artifact
from serve import requirements, wire
from serve.config import ServeConfig, memory_in_use
from serve.engine import Engine, InferRequest, InferResponse, ModelInfo
from serve.errors import GatewayTimeout, HTTPError, InsufficientMemory, ModelExists, NotFound, ServiceUnavailable

logger = logging.getLogger("serve.pool")

RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10, 30)   # a worker that keeps dying is restarted ever more slowly
STOP_WAIT_S = 2.0                            # a worker's grace to exit once its socket is closed
WORKER_BASE_BYTES = 512 << 20                # a worker with torch imported, before any is measured
MEMORY_RESERVE_BYTES = 256 << 20             # kept free for the front door and requests in flight
LIVE = ("idle", "busy", "proving")           # a worker's states while it holds its model


class LoadFailed(HTTPError):
    status, phrase = 500, "Internal Server Error"


class Worker:
    """One worker process and the batch it is working on."""

    def __init__(self, model: "ServedModel", index: int, gpu_id: int | None, tag: str):
        self.model, self.index, self.gpu_id = model, index, gpu_id
        self.prefix = f"answer-{tag}-"   # its spooled answers' names: what a dead process of it left is deleted
        self.proc: asyncio.subprocess.Process | None = None
        self.reader = self.writer = None
        self.state = "starting"          # starting -> idle -> busy -> proving -> idle; dead
        self.batch: list | None = None   # [(request, future)] in the worker now
        self.batch_id = 0
        self.timer: asyncio.TimerHandle | None = None
        self.loaded_once = False
        self.reason = ""                 # why it last died or failed to start

    @property
    def name(self) -> str:
        return f"worker {self.index} of {self.model.name}"


class ServedModel:
    """A model and its workers, with the queue of requests they share."""

    def __init__(self, name: str, model_dir: str, url: str):
        self.name, self.model_dir, self.url = name, model_dir, url
        self.workers: list[Worker] = []
        self.queue: collections.deque = collections.deque()   # (request, future, arrived)
        self.delay_timer: asyncio.TimerHandle | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None   # for the oldest queued request
        self.down_since = time.monotonic()   # when it last had no worker holding it (loading, restarting)
        self.ready = asyncio.Event()       # a worker can answer
        self.first_load: asyncio.Future = asyncio.get_running_loop().create_future()
        self.unloading = False
        self.env: dict = {}                # its workers' environment on top of the engine's
        self.quiet = asyncio.Event()       # no worker of it holds a batch
        self.quiet.set()

    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.url, len(self.workers), self.ready.is_set())


class PythonEngine(Engine):
    name = "python"
    multi_model = True

    def __init__(self, cfg: ServeConfig, workdir: str, required_model: str | None = None):
        """``required_model``: the one model of a real-time endpoint: the engine fails
        (serve exits) when it cannot load; in multi-model mode none is."""
        self.cfg = cfg
        self.required_model = required_model
        self.workdir = workdir
        self.spool = os.path.join(workdir, "spool")
        os.makedirs(self.spool, exist_ok=True)
        self.env = {**os.environ, **cfg.worker_env()}
        self.served: dict[str, ServedModel] = {}
        self._fatal: asyncio.Future = asyncio.get_running_loop().create_future()
        self._ids = itertools.count(1)
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    # ------------------------------------------------------------ Engine
    async def start(self) -> None:
        pass

    async def load(self, name: str, model_dir: str, url: str) -> ModelInfo:
        """Install the model's code/requirements.txt, start its workers, return once one
        has loaded it. Multi-model: 404 when ``model_dir`` holds no model, 507 when it would
        not fit in the memory left (judged before any worker starts)."""
        if name in self.served:
            raise ModelExists(f"model {name!r} is already loaded")
        model = ServedModel(name, model_dir, url)
        self.served[name] = model   # taken now: a second load of the name gets 409
        try:
            model.env = await self._prepare(model)
        except HTTPError as exc:
            self._forget(model)
            if name == self.required_model and not self._fatal.done():
                self._fatal.set_result(exc.message)
            raise
        if model.unloading:   # unloaded while its requirements installed: unload() answered first_load
            await model.first_load
        count = self._fit_workers(model) if name == self.required_model else self.cfg.model_workers
        for index in range(count):
            gpu = index % self.cfg.gpus if self.cfg.gpus else None
            worker = Worker(model, index, gpu, f"w{next(self._ids)}")
            model.workers.append(worker)
            asyncio.ensure_future(self._run_worker(worker))
        try:
            await model.first_load
        except HTTPError:
            self._forget(model)
            raise
        return model.info()

    def _forget(self, model: ServedModel) -> None:
        """A failed load gives its name back, unless it is already someone else's (unloaded
        while loading, then loaded again)."""
        if self.served.get(model.name) is model:
            del self.served[model.name]

    async def _prepare(self, model: ServedModel) -> dict:
        """The environment of the model's workers: its requirements first on their path."""
        try:
            model.model_dir = artifact.model_root(model.model_dir)
            missing = artifact.nothing_to_load(model.model_dir, self.cfg.program)
        except (OSError, ValueError) as exc:
            raise NotFound(f"no model at {model.url!r}: {exc}") from None
        if missing:
            raise NotFound(f"no model at {model.url!r}: {missing}")
        if model.name != self.required_model:
            self._check_memory(model)
        site = self._site(model.name)
        try:
            installed = await asyncio.get_running_loop().run_in_executor(
                None, requirements.install, model.model_dir, site, self.cfg.install_requirements)
        except requirements.RequirementsError as exc:
            raise LoadFailed(str(exc)) from None
        if not installed:
            return {}
        return {"PYTHONPATH": os.pathsep.join(p for p in (installed, self.env.get("PYTHONPATH")) if p)}

    def _room(self, model: ServedModel) -> tuple[int, int, int] | None:
        """(what one worker of ``model`` needs, what the container has free, the model's weights)
        in bytes; None where the container's memory is not known. A worker needs its own memory
        (measured on the workers running, else WORKER_BASE_BYTES) and three times its weights
        (loaded, the private copy its proof makes, the frozen graph)."""
        limit, used = self.cfg.memory_bytes, memory_in_use()
        if not limit or used is None:
            return None
        weights = artifact.weights_size(model.model_dir)
        return self._worker_base() + 3 * weights, limit - used - MEMORY_RESERVE_BYTES, weights

    def _fit_workers(self, model: ServedModel) -> int:
        """The real-time model's workers: the default count, less what the container's memory
        cannot hold (a serverless endpoint of 1-6 GB sizes itself; one always starts)."""
        count = self.cfg.workers
        room = None if self.cfg.workers_set else self._room(model)
        if room is None:
            return count
        per_worker, free, _ = room
        fits = max(1, free // per_worker)
        if fits < count:
            logger.info("%d worker(s) instead of %d: each needs about %d MiB and the container has %d MiB free",
                        fits, count, per_worker >> 20, max(0, free) >> 20)
        return int(min(count, fits))

    def _check_memory(self, model: ServedModel) -> None:
        """507 unless the model's workers fit in what the container has left (``_room``)."""
        room = self._room(model)
        if room is None:
            return
        per_worker, free, weights = room
        need = self.cfg.model_workers * per_worker
        if need > free:
            raise InsufficientMemory(
                f"model {model.name!r} needs about {need >> 20} MiB ({self.cfg.model_workers} worker(s), "
                f"{weights >> 20} MiB of weights) and {max(0, free) >> 20} MiB of the container's "
                f"{self.cfg.memory_bytes >> 20} MiB are free: unload a model first")

    def _worker_base(self) -> int:
        """A worker's memory without its model's weights: the smallest measured, else a default."""
        measured = []
        for model in self.served.values():
            weights = artifact.weights_size(model.model_dir)
            for w in model.workers:
                rss = _anon_rss(w.proc.pid) if w.proc and w.state in LIVE else None
                if rss:
                    measured.append(max(0, rss - weights))
        return min(measured) if measured else WORKER_BASE_BYTES

    async def unload(self, name: str) -> None:
        model = self.served.pop(name, None)
        if model is None:
            raise NotFound(f"model {name!r} is not loaded")
        model.unloading = True
        if not model.first_load.done():   # its load request gets an answer, not a wait for ever
            model.first_load.set_exception(ServiceUnavailable(f"model {name!r} was unloaded while it loaded"))
            model.first_load.exception()   # retrieved: whoever awaits it (or nobody) is fine
        for request, future, _ in model.queue:
            _answer(future, ServiceUnavailable(f"model {name!r} was unloaded"))
        model.queue.clear()
        self._check_idle()   # a drain may be waiting on what was queued for it
        try:   # the requests already in its workers are answered first
            await asyncio.wait_for(model.quiet.wait(), self.cfg.timeout_s)
        except asyncio.TimeoutError:
            pass
        await asyncio.gather(*(self._stop_worker(w) for w in model.workers))
        if name not in self.served:   # its requirements go with it, unless the name is loading again
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(shutil.rmtree, self._site(name), ignore_errors=True))

    def _site(self, name: str) -> str:
        """Where a model's code/requirements.txt is installed."""
        return os.path.join(self.workdir, "site-packages", name)

    def models(self) -> list[ModelInfo]:
        return [m.info() for m in self.served.values()]

    async def infer(self, name: str, request: InferRequest) -> InferResponse:
        model = self.served.get(name)
        if model is None:
            return InferResponse.error(NotFound(f"model {name!r} is not loaded"))
        if self._stopping:   # the front door still listens until the workers have stopped
            return InferResponse.error(ServiceUnavailable("the server is stopping"))
        future = asyncio.get_running_loop().create_future()
        model.queue.append((request, future, time.monotonic()))
        self._idle.clear()
        self._dispatch(model)
        self._arm_deadline(model)
        return await future

    def health(self) -> tuple[bool, str]:
        if self.required_model is None:
            # multi-model: a model loading or restarting answers its own requests (its load
            # waits, its invocations queue); a 503 here would take the whole instance, every
            # other model with it, out of service
            if self._fatal.done():
                return False, self._fatal.result()
            return True, ""
        waiting = [m.name for m in self.served.values() if not m.ready.is_set()]
        if waiting:
            return False, f"loading {', '.join(waiting)}"
        return True, ""

    async def failed(self) -> str:
        return await self._fatal

    async def drain(self, deadline: float) -> None:
        """Every request received is answered, until ``deadline``: the workers stop their
        optimisation work (serve/optimize.py's proofs) so as to answer sooner; what is still
        queued or in a worker at the deadline gets a 503 rather than a reset connection."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for worker in (w for m in self.served.values() for w in m.workers):
            if worker.writer is not None and worker.state in LIVE:
                try:
                    worker.writer.writelines(wire.encode({"op": "drain"}, []))
                except (ConnectionError, RuntimeError):
                    pass
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - start))
            logger.info("drained: no request queued or running after %.1f s", loop.time() - start)
        except asyncio.TimeoutError:
            left = 0
            for model in self.served.values():
                for _, future, _ in model.queue:
                    left += not future.done()
                    _answer(future, ServiceUnavailable("the server stopped before this request's turn"))
                model.queue.clear()
                for worker in model.workers:
                    for _, future in worker.batch or []:
                        left += not future.done()
                        _answer(future, ServiceUnavailable("the server stopped before this request was answered"))
            logger.warning("drain: %d request(s) still queued or running at the end of the grace period "
                           "got a 503", left)

    async def stop(self) -> None:
        self._stopping = True
        for model in self.served.values():   # what came after the drain: no worker will take it
            for _, future, _ in model.queue:
                _answer(future, ServiceUnavailable("the server stopped before this request's turn"))
            model.queue.clear()
        workers = [w for m in self.served.values() for w in m.workers]
        await asyncio.gather(*(self._stop_worker(w) for w in workers))

    def execution_parameters(self) -> dict:
        return self.cfg.execution_parameters()

    # ------------------------------------------------------------ workers
    async def _run_worker(self, worker: Worker) -> None:
        try:
            await self._keep_running(worker)
        finally:   # its process has exited: the answers it left in the spool are nobody's
            self._clear_answers(worker)

    async def _keep_running(self, worker: Worker) -> None:
        """Start the worker and keep it running: started again whenever it dies, until
        its model is unloaded or the engine stops. A model that no worker could load
        fails (its load request gets the reason; a real-time endpoint stops)."""
        attempt = 0
        while not (self._stopping or worker.model.unloading):
            if attempt:
                delay = RESTART_BACKOFF_S[min(attempt - 1, len(RESTART_BACKOFF_S) - 1)]
                logger.warning("%s: starting it again in %.1f s (%s)", worker.name, delay, worker.reason)
                await asyncio.sleep(delay)
                if self._stopping or worker.model.unloading:
                    return
            attempt += 1
            try:
                await self._spawn(worker)
            except _LoadError as exc:
                worker.state, worker.reason = "dead", exc.reason
                if self._stopping or worker.model.unloading:
                    return
                logger.error("%s: the model failed to load: %s", worker.name, exc.reason)
                if any(w.loaded_once for w in worker.model.workers):
                    continue   # it loaded before, or loads elsewhere: a passing failure, try again
                self._model_failed(worker.model, exc.reason)
                # its other workers, still loading, would serve a model nobody can reach
                await asyncio.gather(*(self._stop_worker(w) for w in worker.model.workers if w is not worker))
                return
            attempt = 1   # it loaded: the next death restarts it after the shortest wait
            await self._serve(worker)

    def _model_failed(self, model: ServedModel, reason: str) -> None:
        """No worker of ``model`` could load it: it is dropped, its workers stop."""
        model.unloading = True   # none of its workers is started again
        if not model.first_load.done():
            model.first_load.set_exception(LoadFailed(f"the model failed to load: {reason}"))
            model.first_load.exception()   # retrieved: whoever awaits it (or nobody) is fine
        for request, future, _ in model.queue:
            _answer(future, ServiceUnavailable(f"model {model.name!r} could not be loaded"))
        model.queue.clear()
        self._check_idle()
        if model.name == self.required_model and not self._fatal.done():
            self._fatal.set_result(f"the model failed to load: {reason}")

    async def _spawn(self, worker: Worker) -> None:
        model = worker.model
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:   # out of file descriptors: a start that failed, retried
            raise _LoadError(f"the worker process could not be started: {exc}") from None
        args = [sys.executable, "-m", "serve.worker", "--fd", str(theirs.fileno()), "--model-dir", model.model_dir,
                "--model-name", model.name, "--index", str(worker.index), "--batch-size", str(self.cfg.batch_size),
                "--spool", self.spool, "--answer-prefix", worker.prefix]
        if worker.gpu_id is not None:
            args += ["--gpu-id", str(worker.gpu_id)]
        worker.state = "starting"   # its reason stays: why it is being started again
        try:
            # Own session: a Ctrl-C or a signal to `serve`'s group is for `serve`, which
            # decides when its workers stop (after the drain).
            worker.proc = await asyncio.create_subprocess_exec(*args, pass_fds=(theirs.fileno(),),
                                                               env={**self.env, **model.env},
                                                               stdin=asyncio.subprocess.DEVNULL,
                                                               start_new_session=True)
        except OSError as exc:   # fork or exec failed (ENOMEM, EAGAIN): a start that failed, retried
            ours.close()
            raise _LoadError(f"the worker process could not be started: {exc}") from None
        finally:
            theirs.close()
        worker.reader, worker.writer = await asyncio.open_unix_connection(sock=ours, limit=2 ** 20)
        try:
            header, _ = await asyncio.wait_for(wire.read(worker.reader), self.cfg.startup_timeout_s)
        except asyncio.TimeoutError:
            await self._kill(worker)
            raise _LoadError(f"the model was not loaded after {self.cfg.startup_timeout_s} s "
                             "(BYOC_SERVE_STARTUP_TIMEOUT)") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await worker.proc.wait()
            raise _LoadError(f"the worker exited while loading the model ({_exit_reason(code)})") from None
        if header.get("op") != "ready":
            await worker.proc.wait()
            raise _LoadError(f"{header.get('error', 'Error')}: {header.get('message', '')}")
        if self._stopping or model.unloading:   # it started after the unload stopped its model's workers
            await self._stop_worker(worker)
            raise _LoadError("its model was unloaded while it loaded")
        logger.info("%s ready (pid %s, model loaded in %.1f s)", worker.name, header.get("pid"),
                    header.get("load_s", 0))
        worker.loaded_once = True
        worker.state = "idle"
        model.ready.set()
        if not model.first_load.done():
            model.first_load.set_result(True)
        self._dispatch(model)

    async def _serve(self, worker: Worker) -> None:
        """Read the worker's answers until it dies; then answer what it held."""
        try:
            while True:
                header, parts = await wire.read(worker.reader)
                if header.get("op") == "answers":
                    if worker.state == "busy" and header.get("id") == worker.batch_id:
                        self._answered(worker, header["answers"], parts)
                    else:   # too late: its batch timed out, and the worker is being killed
                        for answer in header.get("answers", []):
                            if answer.get("path"):
                                _unlink(answer["path"])
                elif header.get("op") == "idle" and header.get("id") == worker.batch_id \
                        and worker.state == "proving":
                    worker.state = "idle"   # its proofs are done: it can take the next batch
                    self._dispatch(worker.model)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        code = await worker.proc.wait()
        self._clear_answers(worker)   # it wrote them, nobody took them (a late answer; killed writing one)
        was = worker.state
        worker.state = "dead"
        if worker.timer:
            worker.timer.cancel()
        held, worker.batch = worker.batch or [], None
        if worker.model.unloading or self._stopping:
            why = "its model was unloaded" if worker.model.unloading else "the server stopped"
            for request, future in held:
                _answer(future, ServiceUnavailable(f"no answer: {why} while this request was in a worker"))
            self._settle(worker.model)
            return
        if was == "timed out":
            return
        worker.reason = f"the worker died ({_exit_reason(code)})"
        logger.error("%s: %s%s", worker.name, worker.reason,
                     f" with {len(held)} request(s) in it" if held else "")
        for request, future in held:
            _answer(future, ServiceUnavailable(
                f"the worker answering this request died ({_exit_reason(code)}); it is being restarted"))
        self._model_ready(worker.model)
        self._settle(worker.model)

    def _answered(self, worker: Worker, answers: list, parts: list) -> None:
        if worker.timer:
            worker.timer.cancel()
        held, worker.batch = worker.batch or [], None
        inline = iter(parts)
        for (request, future), answer in zip(held, answers):
            body = b"" if answer.get("path") else next(inline)
            if not future.done():
                future.set_result(InferResponse(answer["status"], answer["content_type"], body,
                                                body_path=_take(answer.get("path"))))
            elif answer.get("path"):
                _unlink(answer["path"])
        # it runs its proofs (serve/optimize.py) now and says "idle" after: no batch goes
        # to it meanwhile, so that no batch's timeout counts them
        worker.state = "proving"
        self._settle(worker.model)

    def _timed_out(self, worker: Worker, batch_id: int) -> None:
        if worker.batch_id != batch_id or worker.batch is None:
            return
        logger.error("%s: no answer within %d s (SAGEMAKER_MODEL_SERVER_TIMEOUT): replacing it",
                     worker.name, self.cfg.timeout_s)
        held, worker.batch = worker.batch, None
        worker.state = "timed out"
        worker.reason = "it timed out"
        for request, future in held:
            _answer(future, GatewayTimeout(
                f"the model did not answer within {self.cfg.timeout_s} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)"))
        asyncio.ensure_future(self._kill(worker))
        self._model_ready(worker.model)
        self._settle(worker.model)

    def _model_ready(self, model: ServedModel) -> None:
        if not any(w.state in LIVE for w in model.workers):
            model.ready.clear()
            model.down_since = time.monotonic()
            self._arm_deadline(model)

    # ------------------------------------------------------------ batching
    def _dispatch(self, model: ServedModel) -> None:
        """Give queued requests to idle workers, up to the batch size each."""
        now = time.monotonic()
        batch_size, delay = self.cfg.batch_size, self.cfg.max_batch_delay_ms / 1000
        while model.queue:
            worker = next((w for w in model.workers if w.state == "idle"), None)
            if worker is None:
                return
            if len(model.queue) < batch_size and delay > 0:
                wait = model.queue[0][2] + delay - now
                if wait > 0:   # a lone request waits a little for company
                    if model.delay_timer is None:
                        model.delay_timer = asyncio.get_running_loop().call_later(wait, self._delay_over, model)
                    return
            take = [model.queue.popleft() for _ in range(min(batch_size, len(model.queue)))]
            self._send(worker, [(request, future) for request, future, _ in take if not future.done()])

    def _arm_deadline(self, model: ServedModel) -> None:
        """While no worker holds the model (they died and may fail to load again), a queued
        request waits at most SAGEMAKER_MODEL_SERVER_TIMEOUT: one timer per model, for the
        oldest. A live worker, even one busy or proving, takes them in turn: its batches have
        their own timeout."""
        if model.deadline_timer is None and model.queue and not any(w.state in LIVE for w in model.workers):
            wait = self._gives_up_at(model) - time.monotonic()
            model.deadline_timer = asyncio.get_running_loop().call_later(max(0.0, wait), self._deadline, model)

    def _gives_up_at(self, model: ServedModel) -> float:
        """When the oldest queued request stops waiting for a worker: a timeout after it came
        or after the model lost its last worker, whichever is later."""
        return max(model.queue[0][2], model.down_since) + self.cfg.timeout_s

    def _deadline(self, model: ServedModel) -> None:
        model.deadline_timer = None
        if any(w.state in LIVE for w in model.workers):
            return   # one started meanwhile; _model_ready arms the timer again if none is left
        now = time.monotonic()
        why = "; ".join(sorted({w.reason for w in model.workers if w.reason and w.state not in LIVE}))
        late = 0
        while model.queue and self._gives_up_at(model) <= now:
            _, future, _ = model.queue.popleft()
            late += not future.done()
            _answer(future, ServiceUnavailable(
                f"no worker of model {model.name!r} could take this request within {self.cfg.timeout_s} s "
                f"(SAGEMAKER_MODEL_SERVER_TIMEOUT){': ' + why if why else ''}"))
        if late:
            logger.error("model %s: %d request(s) waited %d s for a worker: 503", model.name, late,
                         self.cfg.timeout_s)
        self._arm_deadline(model)
        self._check_idle()

    def _delay_over(self, model: ServedModel) -> None:
        model.delay_timer = None
        self._dispatch(model)

    def _send(self, worker: Worker, batch: list) -> None:
        if not batch:
            return
        worker.state = "busy"
        worker.batch = batch
        worker.batch_id = next(self._ids)
        worker.model.quiet.clear()
        busy = sum(w.state in ("busy", "proving") for m in self.served.values() for w in m.workers)
        threads = 0 if self.cfg.worker.threads else max(1, self.cfg.cpus // max(1, busy))
        metas, parts = [], []
        for request, _ in batch:
            meta = {"content_type": request.content_type, "accept": request.accept,
                    "custom_attributes": request.custom_attributes}
            if request.body_path:
                meta["path"] = request.body_path
            else:
                parts.append(request.body)
            metas.append(meta)
        worker.timer = asyncio.get_running_loop().call_later(self.cfg.timeout_s, self._timed_out, worker,
                                                             worker.batch_id)
        header = {"op": "batch", "id": worker.batch_id, "threads": threads, "requests": metas}
        logger.debug("%s: batch of %d request(s), %s torch thread(s)", worker.name, len(batch), threads or "fixed")
        try:
            worker.writer.writelines(wire.encode(header, parts))
        except (ConnectionError, RuntimeError):   # it died meanwhile: _serve answers the batch
            pass

    def _settle(self, model: ServedModel) -> None:
        """A batch of ``model``'s ended: is the model, is the engine, quiet now?"""
        if not any(w.batch for w in model.workers):
            model.quiet.set()
        self._check_idle()

    def _check_idle(self) -> None:
        busy = any(m.queue or any(w.batch for w in m.workers) for m in self.served.values())
        if not busy:
            self._idle.set()

    # ------------------------------------------------------------ stopping
    async def _stop_worker(self, worker: Worker) -> None:
        """Called once no request is left in the worker: it holds nothing worth waiting for
        (it may be busy proving its optimisation), so SIGTERM, and SIGKILL if it lingers."""
        if worker.writer is not None:
            worker.writer.close()
        if worker.proc is None or worker.proc.returncode is not None:
            return
        try:
            worker.proc.terminate()
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(worker.proc.wait(), STOP_WAIT_S)
        except asyncio.TimeoutError:
            await self._kill(worker)

    def _clear_answers(self, worker: Worker) -> None:
        """Delete the answer files of the worker's dead process that the front door never took."""
        try:
            names = [n for n in os.listdir(self.spool) if n.startswith(worker.prefix)]
        except OSError:
            return
        for name in names:
            _unlink(os.path.join(self.spool, name))

    async def _kill(self, worker: Worker) -> None:
        if worker.proc is not None and worker.proc.returncode is None:
            try:
                worker.proc.kill()
            except ProcessLookupError:
                pass
            await worker.proc.wait()


class _LoadError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _answer(future: asyncio.Future, error: HTTPError) -> None:
    if not future.done():
        future.set_result(InferResponse.error(error))


def _take(path: str | None) -> str | None:
    """An answer file the front door now owns (it deletes it once sent): renamed out of its
    worker's prefix, so that clearing what that worker left never deletes it."""
    if path is None:
        return None
    taken = os.path.join(os.path.dirname(path), "taken-" + os.path.basename(path))
    try:
        os.rename(path, taken)
    except OSError:
        return path
    return taken


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _anon_rss(pid: int) -> int | None:
    """A process's own resident memory (not the shared libraries' pages), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        hint = ": killed, out of memory or by hand" if -code == signal.SIGKILL else ""
        return f"signal {name}{hint}"
    return f"exit status {code}"
