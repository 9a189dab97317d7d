"""Ray actors hosting policies and critics, and the pools the runner talks to.

`PolicyActor` / `CriticActor` build their backend from a config section inside the actor
process (torch threads set there). An `ActorPool` holds a model's replicas: requests of one
problem always go to the same replica (prefix-cache affinity), and a replica that dies is
replaced and the request retried, so a job survives a crashed actor. `RemotePolicy` and
`RemoteCritic` put a pool behind the ordinary Policy / Critic protocols, so the runner and
the searches are the same code locally and on a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import zlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from critics.base import score_with_cost
from treesearch.components import build_policy, plain
from treesearch.config import ClusterConfig, PoolConfig, with_defaults
from treesearch.hosting import (Clients, critic_from_specs, critic_shares_policy, log_shared_critic, prepare_process,
                                release, wanted_models)
from treesearch.policy.base import EngineLost, calls_in_flight, per_state_counts, per_state_params
from treesearch.types import JobStopped, State

log = logging.getLogger(__name__)


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join the cluster `address` names ("auto", "ray://host:port", "host:port"), else the
    one the RAY_ADDRESS environment variable names (as under `ray job submit`), else start
    a private local cluster (`ray.init(address="local")`): a cluster that merely runs on
    the machine is not joined by accident."""

    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        gcs = _known_gcs_address(address)
        if gcs is not None and not gcs_answers(gcs):  # ray.init would wait for minutes, silently
            raise ClusterLost(
                f"cluster.address={address}: no Ray cluster answers at {gcs} (waited {GCS_WAIT_S:.0f} s). "
                "Start one (`ray start --head`) or leave cluster.address unset for a private local cluster"
            )
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
        global _PRIVATE_CLUSTER
        _PRIVATE_CLUSTER = True


_PRIVATE_CLUSTER = False  # this process started its own local cluster (its resources are all it will have)


def check_gpus_exist(name: str, num_gpus: float) -> None:
    """Refuse a pool that asks for GPUs on a private local cluster that has none, where
    Ray would wait for them forever; on a joined cluster (which may add GPU nodes) only warn."""
    import ray

    if not num_gpus or not ray.is_initialized():
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have:
        return
    why = (f"cluster.{name}.num_gpus={num_gpus:g} but the Ray cluster has no GPU; on a CPU machine use "
           f"policy=vllm_cpu for vLLM (or set cluster.{name}.num_gpus=0)")
    if _PRIVATE_CLUSTER:
        raise ModelLoadError(why)
    log.warning("%s: the %s actors wait until a GPU node joins", why, name)


class ClusterLost(JobStopped):
    """The Ray cluster a job runs on does not answer: stopped, or never there."""


GCS_WAIT_S = 10.0  # how long a silent cluster gets before a job gives up on it


def gcs_answers(address: str, wait_s: Optional[float] = None) -> bool:
    """Whether the Ray cluster's control store (GCS, "host:port") accepts a connection
    within `wait_s` seconds (default `GCS_WAIT_S`)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + (GCS_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def current_gcs_address() -> str:
    """The GCS "host:port" of the cluster this process is connected to."""
    import ray

    return ray.get_runtime_context().gcs_address


def _known_gcs_address(address: str) -> Optional[str]:
    """The GCS "host:port" that `address` leads to, where that can be told without Ray
    ("auto" reads the address Ray saved for the machine's latest cluster); None otherwise
    (a Ray client address, "ray://...", or no saved cluster: ray.init says why)."""
    if address.startswith("ray://"):
        return None
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment

            address = get_ray_address_from_environment("auto", None)
        except Exception:  # no cluster saved, or Ray moved this helper: ray.init decides
            return None
    host, _, port = (address or "").rpartition(":")
    return address if host and port.isdigit() else None


class _PolicyHost:
    """Body of `PolicyActor`: a policy backend built from its config, and the critic that
    runs on it when the job has one (`shared`: its critic and task specs; see
    `hosting.critic_shares_policy`)."""

    def __init__(self, spec: dict, shared: Optional[tuple[dict, Optional[dict]]] = None):
        prepare_process(spec.get("threads"))
        self.spec = spec
        self.policy = build_policy(spec)
        self.critic = critic_from_specs(shared, policy=self.policy) if shared is not None else None

    def reload(self, spec: dict, shared: Optional[tuple[dict, Optional[dict]]] = None) -> bool:
        """Swap in another policy (e.g. the next self-training round's weights) and its
        critic; the old ones' memory is freed first."""
        self.critic = None
        release(self.policy)
        self.policy = None
        self.__init__(spec, shared)
        return True

    async def expand(self, states, n, params):
        return await self._unless_lost(self.policy.expand(states, n, params))

    async def complete(self, states, params):
        return await self._unless_lost(self.policy.complete(states, params))

    async def score_with_cost(self, states):
        if self.critic is None:
            raise RuntimeError("this policy actor hosts no critic")
        return await self._unless_lost(score_with_cost(self.critic, states))

    @staticmethod
    async def _unless_lost(call):
        """Await a backend call; if its engine is lost for good (`EngineLost`), end this
        actor's process, so that its pool starts a fresh actor and retries the call."""
        try:
            return await call
        except EngineLost as err:
            log.error("%s; ending this policy actor so that it is replaced", err)
            logging.shutdown()
            os._exit(1)

    def ping(self) -> bool:
        return True

    def calls_in_flight(self) -> int:
        """How many calls this actor's backend serves at once to good effect."""
        return calls_in_flight(self.policy)

    def describe(self) -> dict:
        """The config this actor's model was built from."""
        return self.spec


class _CriticHost:
    """Body of `CriticActor`: a critic built from its config (and the task's)."""

    def __init__(self, spec: dict, task_spec: Optional[dict]):
        prepare_process(spec.get("threads"))
        self.spec = spec
        self.critic = critic_from_specs((spec, task_spec))

    def reload(self, spec: dict, task_spec: Optional[dict]) -> bool:
        """Swap in another critic (e.g. a newly trained PRM); the old one's memory is
        freed first."""
        release(self.critic)
        self.critic = None
        self.__init__(spec, task_spec)
        return True

    async def score_with_cost(self, states):
        return await score_with_cost(self.critic, states)

    def ping(self) -> bool:
        return True

    def describe(self) -> dict:
        """The config this actor's model was built from."""
        return self.spec


def _actor_classes():
    import ray

    return ray.remote(_PolicyHost), ray.remote(_CriticHost)


class ModelLoadError(ValueError):
    """A pool's model could not be built (a missing folder, a bad checkpoint...)."""


def root_cause(err: Exception) -> str:
    """The last "SomeError: message" line of a Ray error (the actor's own exception, at
    the bottom of the traceback Ray carries), else its first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and " " not in head and head.rsplit(".", 1)[-1].endswith(("Error", "Exception")):
            return line
    return lines[0] if lines else type(err).__name__


class ReplicaDown(RuntimeError):
    """A model replica was taken out after its calls kept failing (see `ActorPool.call`)."""


BREAKER_PROBLEMS = 3  # different problems failing alone, in a row, that take a replica out

RAY_ACTOR_OPTIONS = ("num_cpus", "num_gpus", "max_restarts", "max_task_retries", "max_concurrency")


class ActorPool:
    """Replicas of one model as Ray actors, with affinity routing and replacement of dead
    replicas. `resources`: replicas, num_cpus, num_gpus (fractions allowed),
    max_restarts, max_task_retries, max_concurrency, and optionally runtime_env (Ray's:
    e.g. `{py_modules: [...]}` or `{env_vars: {PYTHONPATH: ...}}` to reach user code)."""

    def __init__(self, actor_class: Any, args: tuple, resources: Mapping, name: str, retries: int = 3):
        res = with_defaults(PoolConfig, resources)
        self.replicas = int(res["replicas"])
        if self.replicas < 1:
            raise ValueError(f"{name}: replicas must be >= 1, got {self.replicas}")
        self.actor_class = actor_class
        self.args = args
        self.name = name
        self.retries = retries
        self.options = {key: res[key] for key in RAY_ACTOR_OPTIONS}
        check_gpus_exist(name, float(self.options["num_gpus"] or 0))
        if res.get("runtime_env"):
            self.options["runtime_env"] = res["runtime_env"]
        self.actors = [self._start() for _ in range(self.replicas)]
        self.replacements = 0
        self.breaker_attempts = 4 * (retries + 1)
        self.failures = [0] * self.replicas  # attempts failed in a row, per replica
        self.failed_problems: list[set] = [set() for _ in range(self.replicas)]  # failed alone since a success
        self.broken: list[Optional[str]] = [None] * self.replicas  # why a replica was taken out
        self.lost: Optional[str] = None  # why the cluster is known to be gone

    def _start(self):
        return self.actor_class.options(**self.options).remote(*self.args)

    def ready(self, timeout: float = 600.0) -> None:
        """Block until every replica has built its model (surfaces load errors early)."""
        import ray

        pings = [a.ping.remote() for a in self.actors]
        pending = pings
        deadline = time.monotonic() + timeout
        try:
            while pending:  # a model takes minutes to load: check between waits that the cluster is still there
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(30.0, timeout))
                if pending and self._cluster_gone(f"{self.name} models loaded"):
                    raise ClusterLost(self.lost)
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(f"the {self.name} model did not load within {timeout:.0f} s")
            ray.get(pings, timeout=timeout)  # raises a load error, if any
        except ray.exceptions.RayActorError as err:  # its model failed to build: say why, in one line
            raise ModelLoadError(f"the {self.name} model could not be built: {root_cause(err)}") from err

    def reload(self, *args: Any, timeout: float = 600.0) -> None:
        """Rebuild every replica's model from new constructor arguments, in place: the
        actors (and the cluster) stay up. Replacements started later use them too."""
        import ray

        self.args = args
        fresh = self.revive()  # started with the new arguments already
        ray.get([a.reload.remote(*args) for i, a in enumerate(self.actors) if i not in fresh], timeout=timeout)

    def revive(self) -> set[int]:
        """Start a fresh actor for every replica that was taken out (a new job's chance);
        return those replicas."""
        fresh = set()
        for replica, why in enumerate(self.broken):
            if why is not None:
                log.warning("%s replica %d: starting it again (it was taken out: %s)", self.name, replica, why)
                self.actors[replica] = self._start()
                self.broken[replica], self.failures[replica], self.failed_problems[replica] = None, 0, set()
                fresh.add(replica)
        return fresh

    def replica_for(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.replicas

    async def call(self, replica: int, method: str, *args: Any, problems: frozenset = frozenset()) -> Any:
        """Call `method` on a replica; if the replica is dead, replace it and retry.
        `problems`: the ids of the problems whose states the call carries.

        A replica that cannot serve is taken out (`ReplicaDown`): once calls carrying a
        single problem have failed for `BREAKER_PROBLEMS` different problems with no
        success between (or `breaker_attempts` attempts in a row failed), every later call
        to it fails at once. A model that cannot come back then ends the job's remaining
        problems quickly as error rows, instead of being restarted for each of them; a
        poison problem (one that crashes the actor every time) fails alone, and the
        others' successes keep the replica in."""
        import ray

        for attempt in range(self.retries + 1):
            if self.lost is not None:
                raise ClusterLost(self.lost)
            if self.broken[replica] is not None:
                raise ReplicaDown(f"{self.name} replica {replica} is down: {self.broken[replica]}")
            actor = self.actors[replica]
            try:
                result = await getattr(actor, method).remote(*args)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                await self._check_cluster(err)
                if self._count_failure(replica, problems, err):
                    if self.actors[replica] is actor:
                        ray.kill(actor, no_restart=True)
                    raise ReplicaDown(f"{self.name} replica {replica} is down: {self.broken[replica]}") from err
                if attempt == self.retries:
                    raise
                log.warning("%s replica %d failed (%s); replacing it and retrying", self.name, replica, err)
                if self.actors[replica] is actor:  # another request may have replaced it already
                    ray.kill(actor, no_restart=True)  # a restarting zombie would hold its resources
                    self.actors[replica] = self._start()
                    self.replacements += 1
                await asyncio.sleep(0.1 * (attempt + 1))
            else:
                self.failures[replica], self.failed_problems[replica] = 0, set()
                return result
        raise AssertionError("unreachable")

    async def _check_cluster(self, err: Exception) -> None:
        """Raise `ClusterLost` when a failed call's cluster is gone (no replacement could
        start): the job stops with its finished results kept, instead of retrying every
        problem until Ray ends the process."""
        during = f"{self.name} replicas were serving (the last failure: {type(err).__name__})"
        if await asyncio.to_thread(self._cluster_gone, during):
            raise ClusterLost(self.lost) from err

    def _cluster_gone(self, during: str) -> bool:
        """Whether the cluster is gone: probed once (`gcs_answers`); once gone, `lost`
        says so, and later calls fail without a probe."""
        if self.lost is None:
            address = current_gcs_address()
            if not gcs_answers(address):
                self.lost = f"the Ray cluster at {address} stopped answering while {during}"
        return self.lost is not None

    def _count_failure(self, replica: int, problems: frozenset, err: Exception) -> bool:
        """Record a failed attempt; True when the replica is (now) taken out."""
        if self.broken[replica] is None:
            self.failures[replica] += 1
            if len(problems) == 1:
                self.failed_problems[replica] |= problems
            if len(self.failed_problems[replica]) >= BREAKER_PROBLEMS or self.failures[replica] >= self.breaker_attempts:
                first = str(err).splitlines()[0] if str(err) else ""
                self.broken[replica] = (f"{self.failures[replica]} attempts failed in a row, alone for "
                                        f"{len(self.failed_problems[replica])} different problems; the last: "
                                        f"{type(err).__name__}: {first}")
                log.error("%s replica %d is taken out: %s", self.name, replica, self.broken[replica])
        return self.broken[replica] is not None

    async def scatter(self, method: str, states: Sequence[State], make_args) -> list:
        """Split a batch by replica (affinity by problem id), call each part concurrently,
        and return the per-state results in input order. `make_args(indices)` gives the
        call's arguments for the states at `indices`."""
        groups: dict[int, list[int]] = {}
        for i, state in enumerate(states):
            groups.setdefault(self.replica_for(state.problem.id), []).append(i)
        parts = await asyncio.gather(
            *(self.call(replica, method, *make_args(idx), problems=frozenset(states[i].problem.id for i in idx))
              for replica, idx in groups.items())
        )
        return [(idx, part) for idx, part in zip(groups.values(), parts)]

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


class _Replicated:
    """Lets the runner batch per replica: `replicas`, and the replica a state goes to."""

    pool: ActorPool

    @property
    def replicas(self) -> int:
        return self.pool.replicas

    def replica_of(self, state: State) -> int:
        return self.pool.replica_for(state.problem.id)


class RemotePolicy(_Replicated):
    """The Policy protocol over an ActorPool of PolicyActors; `calls_in_flight`: the calls
    each replica takes at once (`ModelPools.ready` learns it from the backend)."""

    def __init__(self, pool: ActorPool, calls_in_flight: int = 1):
        self.pool = pool
        self.calls_in_flight = calls_in_flight

    async def expand(self, states, n, params):
        counts = per_state_counts(states, n)
        params = per_state_params(states, params)

        def args(idx):
            return [states[i] for i in idx], [counts[i] for i in idx], [params[i] for i in idx]

        out: list = [None] * len(states)
        for idx, part in await self.pool.scatter("expand", states, args):
            for i, steps in zip(idx, part):
                out[i] = steps
        return out

    async def complete(self, states, params):
        params = per_state_params(states, params)

        def args(idx):
            return [states[i] for i in idx], [params[i] for i in idx]

        out: list = [None] * len(states)
        for idx, part in await self.pool.scatter("complete", states, args):
            for i, steps in zip(idx, part):
                out[i] = steps
        return out


class RemoteCritic(_Replicated):
    """The Critic protocol (with costs) over an ActorPool of CriticActors."""

    def __init__(self, pool: ActorPool):
        self.pool = pool

    async def score_with_cost(self, states: Sequence[State]):
        values = np.zeros(len(states))
        tokens = np.zeros(len(states), dtype=np.int64)
        for idx, (v, t) in await self.pool.scatter("score_with_cost", states, lambda idx: ([states[i] for i in idx],)):
            values[idx] = v
            tokens[idx] = t
        return values, tokens

    async def score(self, states: Sequence[State]) -> np.ndarray:
        values, _ = await self.score_with_cost(states)
        return values

    def __repr__(self) -> str:
        return f"RemoteCritic({self.pool.name})"


class ModelPools:
    """The policy pool and (optional) critic pool a job needs. Jobs create their own, or
    reuse one across jobs (self-training): `configure(cfg)` reloads a pool's model in place
    when its config changed, and starts or stops the critic pool as needed."""

    def __init__(self, cfg: Mapping):
        cluster = with_defaults(ClusterConfig, cfg.get("cluster"))
        init_ray(cluster.get("address"), cluster.get("num_cpus"))
        self.resources = cluster
        self.policy_spec, wanted = wanted_models(cfg)
        self.shared = wanted if critic_shares_policy(cfg) else None  # the critic the policy actors host
        self.policy = policy_pool(self.policy_spec, self.shared, cluster["policy"])
        log_shared_critic(self.shared)
        self.critic: Optional[ActorPool] = None  # a critic in a pool of its own
        self.policy_calls = 1  # calls a policy replica takes at once (known once ready)
        self.critic_specs: Optional[tuple[dict, dict]] = None  # (critic, task) the critic pool was built for
        self.configure(cfg)

    def configure(self, cfg: Mapping) -> None:
        policy_spec, wanted = wanted_models(cfg)
        shared = wanted if critic_shares_policy(cfg) else None
        if (policy_spec, shared) != (self.policy_spec, self.shared):
            self.policy.reload(policy_spec, shared)
            self.policy_spec, self.shared = policy_spec, shared
            log_shared_critic(shared)
        if shared is not None:
            wanted = None  # no pool of its own
        if wanted is None and self.critic is not None:
            self.critic.shutdown()
            self.critic = None
        elif wanted is not None and self.critic is None:
            self.critic = critic_pool(*wanted, self.resources["critic"])
        elif wanted is not None and wanted != self.critic_specs:
            self.critic.reload(*wanted)
        self.critic_specs = wanted
        for pool in self.pools():  # replicas taken out in an earlier job get a fresh start
            pool.revive()

    def ready(self) -> None:
        """Block until every model is loaded; learn how many calls a policy replica takes
        at once (its backend's `calls_in_flight`, at most the actor's max_concurrency)."""
        import ray

        for pool in self.pools():
            pool.ready()
        engine_calls = ray.get(self.policy.actors[0].calls_in_flight.remote(), timeout=600)
        self.policy_calls = max(1, min(int(engine_calls), int(self.policy.options["max_concurrency"])))

    def clients(self) -> Clients:
        critic_pool = self.policy if self.shared is not None else self.critic
        critic = RemoteCritic(critic_pool) if critic_pool is not None else None
        return Clients(RemotePolicy(self.policy, self.policy_calls), critic, self.policy.replicas,
                       critic_pool.replicas if critic_pool is not None else 1)

    def replacements(self) -> dict:
        return {pool.name: pool.replacements for pool in self.pools()}

    def pools(self) -> list[ActorPool]:
        return [self.policy] + ([self.critic] if self.critic is not None else [])

    def shutdown(self) -> None:
        for pool in self.pools():
            pool.shutdown()


def policy_pool(policy_cfg: Mapping, shared: Optional[tuple], resources: Mapping) -> ActorPool:
    """The policy's pool; `shared`: the (critic, task) specs of a critic its actors host."""
    policy_actor, _ = _actor_classes()
    return ActorPool(policy_actor, (plain(policy_cfg), shared), resources, name="policy")


def critic_pool(critic_cfg: Mapping, task_cfg: Mapping, resources: Mapping) -> ActorPool:
    _, critic_actor = _actor_classes()
    return ActorPool(critic_actor, (plain(critic_cfg), plain(task_cfg)), resources, name="critic")
