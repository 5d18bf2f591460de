"""Where the models of a zoo are scanned: local worker processes, or Ray.

Both engines take a list of tasks (:func:`aegis_tf.zoo.worker.scan_task`'s input) and
call ``on_result(result)`` in the calling process as each model finishes, in the order
they finish. A worker that dies mid-scan (killed, out of memory) costs only its model:
that model is tried again, up to ``retries`` more times, then given an error result
that says why; the other models are unaffected.

* :class:`LocalEngine`: ``workers`` processes on this machine (spawned, so each starts
  with its math threads capped at ``threads``; ``workers x threads`` never exceeds the
  cores). Each worker takes one model at a time and keeps its libraries loaded.
* :class:`RayEngine`: one Ray task per model, with its CPUs (``threads``) and GPUs
  declared, retried by Ray when its worker dies (``max_retries``), results streamed back
  with ``ray.wait`` as they finish. ``address`` joins a running cluster
  (``ray.init(address=...)``); without it a local Ray instance starts and stops with the
  scan. Ray is an optional extra: ``pip install .[ray]``.
"""

import collections
import contextlib
import multiprocessing
import os
import signal

from aegis_tf.core.errors import AegisError
from aegis_tf.core.threads import THREAD_VARIABLES, cap_process_threads
from aegis_tf.zoo.worker import FAULT_VARIABLE, error_result, scan_task

__all__ = ["LocalEngine", "RayEngine", "make_engine", "ENGINES", "cores"]

ENGINES = ("local", "ray")


def cores():
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _worker_main(conn):
    """A local worker (its math threads capped by the environment it was spawned with,
    :func:`_child_environment`): scan the tasks the parent sends until it sends ``None`` or
    goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    _die_with_parent()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(scan_task(task))


@contextlib.contextmanager
def _child_environment(threads):
    """The thread caps in this process's environment while a worker is spawned: the child
    inherits them before it imports anything (NumPy included, which a spawned child may
    import while it re-imports the parent's main module)."""
    names = THREAD_VARIABLES + ("TF_CPP_MIN_LOG_LEVEL",)
    saved = {name: os.environ.get(name) for name in names}
    try:
        cap_process_threads(threads)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _die_with_parent():
    """Linux: have the kernel kill this worker when its parent dies (SIGKILL, a CI timeout), so
    that no orphan goes on writing into a model's folder. Elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        pass
    if os.getppid() == 1:  # the parent died before prctl took hold
        os._exit(1)


class _Worker:
    def __init__(self, context, threads):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child,), daemon=True)
        with _child_environment(threads):
            self.process.start()
        child.close()
        self.task = None

    def stop(self, *, force=False):
        if force:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.process.join(timeout=None if force else 10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _poll(conn):
    try:
        return conn.poll()
    except (OSError, ValueError):
        return False


def _death(process):
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LocalEngine:
    """``workers`` processes of this machine, ``threads`` math threads each."""

    name = "local"

    def __init__(self, *, workers=1, threads=None, retries=1):
        n = cores()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise AegisError(f"--workers must be a positive integer. Received: {workers!r}")
        if workers > n:
            raise AegisError(f"--workers must be at most the {n} core(s) of this machine (each worker needs a "
                             f"core). Received: {workers}")
        threads = max(1, n // workers) if threads is None else threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise AegisError(f"--threads must be a positive integer. Received: {threads!r}")
        if workers * threads > n:
            raise AegisError(f"--workers {workers} x --threads {threads} exceeds the {n} core(s) of this machine")
        _check_retries(retries)
        self.workers, self.threads, self.retries = workers, threads, retries

    def describe(self):
        return {"engine": self.name, "workers": self.workers, "threads_per_worker": self.threads,
                "retries": self.retries, "cores": cores()}

    def run(self, tasks, on_result):
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")
        pending = collections.deque(tasks)
        attempts = collections.Counter()
        pool = []
        try:
            while pending or any(w.task for w in pool):
                pool = [w for w in pool if w.process.is_alive() or w.task]
                while len(pool) < min(self.workers, len(pending) + sum(bool(w.task) for w in pool)):
                    pool.append(_Worker(context, self.threads))
                for w in pool:
                    if w.task is None and pending:
                        w.task = pending.popleft()
                        attempts[w.task["entry"]["name"]] += 1
                        try:
                            w.conn.send(w.task)
                        except (OSError, ValueError):  # it died while idle: the loop below sees it
                            pass
                busy = [w for w in pool if w.task]
                ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0))
                for w in busy:
                    result = None
                    if w.conn in ready or (not w.process.is_alive() and _poll(w.conn)):
                        # (a worker that sent its result and then died: the result still counts)
                        try:
                            result = w.conn.recv()
                        except (EOFError, OSError):
                            result = None
                    if result is not None:
                        name = w.task["entry"]["name"]
                        on_result({**result, "attempts": attempts[name]})
                        w.task = None
                    elif w.process.sentinel in ready or not w.process.is_alive():
                        w.process.join()
                        self._died(w, attempts, pending, on_result)
                        w.conn.close()
                        pool.remove(w)
        except BaseException:
            for w in pool:
                w.stop(force=True)
            raise
        for w in pool:
            w.stop()

    def _died(self, worker, attempts, pending, on_result):
        task = worker.task
        name = task["entry"]["name"]
        why = f"worker process died mid-scan ({_death(worker.process)})"
        if attempts[name] <= self.retries:
            pending.appendleft({**task, "retry_reason": why})
        else:
            on_result({**error_result(task, f"{why}, on each of {attempts[name]} attempt(s)",
                                      attempts=attempts[name]), "transient": True})
        worker.task = None


def _check_retries(retries):
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise AegisError(f"--retries must be 0 or a positive integer. Received: {retries!r}")


def _ray_scan_task(task):
    """The Ray task: the same scan, in a Ray worker (its threads capped by the task's runtime env)."""
    return scan_task(task)


class RayEngine:
    """One Ray task per model; ``address`` joins a running cluster, else a local instance starts."""

    name = "ray"

    def __init__(self, *, address=None, threads=None, gpus=0.0, retries=1, num_cpus=None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise AegisError("--engine ray needs Ray: pip install 'aegis-tf[ray]' (or pip install ray)") from None
        threads = 1 if threads is None else threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise AegisError(f"--threads must be a positive integer. Received: {threads!r}")
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0:
            raise AegisError(f"--gpus-per-task must be a number >= 0. Received: {gpus!r}")
        _check_retries(retries)
        if address is not None and num_cpus is not None:
            raise AegisError("num_cpus sizes a local Ray instance; a cluster joined with --address has its own")
        self.address, self.threads, self.gpus, self.retries, self.num_cpus = address, threads, gpus, retries, num_cpus
        self.cluster = None

    def describe(self):
        return {"engine": self.name, "address": self.address or "local instance", "cpus_per_task": self.threads,
                "gpus_per_task": self.gpus, "retries": self.retries, "cluster": self.cluster}

    def _env(self):
        """Each task's environment: its math threads capped at its declared CPUs, and this
        checkout importable (a cluster on other machines needs aegis-tf installed there)."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {name: str(self.threads) for name in THREAD_VARIABLES}
        env.update(PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3")
        if os.environ.get(FAULT_VARIABLE):  # the tests' fault injection reaches Ray's workers too
            env[FAULT_VARIABLE] = os.environ[FAULT_VARIABLE]
        return env

    def run(self, tasks, on_result):
        import ray

        started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.num_cpus or cores(), **kwargs)
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError...: one line
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise AegisError(f"cannot start or join {where}: {(str(e).splitlines() or [''])[0]}") from None
            started = True
        self.cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        self.cluster["nodes"] = len(nodes)
        most_cpu = max([r.get("CPU", 0) for r in nodes], default=0)
        most_gpu = max([r.get("GPU", 0) for r in nodes], default=0)
        if self.threads > most_cpu or self.gpus > most_gpu:
            if started:
                ray.shutdown()
            raise AegisError(f"no node of the Ray cluster can run a task of --threads {self.threads} CPU(s) and "
                             f"--gpus-per-task {self.gpus:g} GPU(s): its largest node has {most_cpu:g} CPU(s) and "
                             f"{most_gpu:g} GPU(s)")
        remote = ray.remote(_ray_scan_task).options(
            num_cpus=self.threads, num_gpus=self.gpus, max_retries=self.retries, retry_exceptions=False,
            runtime_env={"env_vars": self._env()})
        refs = {}
        try:
            refs = {remote.remote(task): task for task in tasks}
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    task = refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        first = (str(e).strip().splitlines() or [""])[0]
                        died = isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
                        why = (f"Ray worker died mid-scan, on each of {1 + self.retries} attempt(s)" if died
                               else "Ray task failed")
                        result = {**error_result(task, f"{why} ({type(e).__name__}: {first})",
                                                 attempts=1 + self.retries if died else None), "transient": True}
                    on_result(result)
        except BaseException:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            raise
        finally:
            if started:
                ray.shutdown()


def make_engine(engine="local", *, workers=1, threads=None, address=None, gpus=0.0, retries=1):
    """The engine named ``engine`` (``local`` or ``ray``), its settings checked."""
    if engine == "local":
        if address is not None:
            raise AegisError("--address joins a Ray cluster; it goes with --engine ray")
        if gpus:
            raise AegisError("--gpus-per-task declares Ray resources; it goes with --engine ray")
        return LocalEngine(workers=workers, threads=threads, retries=retries)
    if engine == "ray":
        if workers != 1:
            raise AegisError("--workers sizes the local engine; Ray runs as many tasks as the cluster's CPUs allow "
                             "(--threads each)")
        return RayEngine(address=address, threads=threads, gpus=gpus, retries=retries)
    raise AegisError(f"--engine must be local or ray. Received: {engine!r}")
