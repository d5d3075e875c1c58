"""Starting a Nuwa replica group on a Ray cluster (FuxiMaster's job in a `fuxi up` cluster).

Replicas go one per node where there are enough nodes, pinned with node affinity so that a
restarted replica finds its own disk again. Replica ``i`` keeps its WAL and snapshots under
``<data_dir>/nuwa/replica-<i>`` on its node.

A replica whose node is gone (or whose disk was lost) is *replaced*, not just restarted:
``replace_replica`` starts a brand-new replica with a new id, adds it as a learner, waits
until it has caught up, promotes it, and removes the old one -- three single-server
membership changes (``nuwa.core.raft``). The group keeps its full size and fault tolerance.

Peer authentication (``nuwa.core.peer_auth``): ``start_group`` creates the cluster's peer secret
(``PEER_SECRET_BYTES`` random bytes) once, in ``<data_dir>/nuwa/peer.secret`` (0600, its
directory 0700), and hands it to every replica as a constructor argument. A ``Group`` rebuilt
from ``to_dict`` (FuxiMaster's supervisor) reads it from that file; ``to_dict`` and ``repr``
never contain it. Replicas bind ``host``: loopback for a one-machine cluster, each node's own
address (``NODE_IP``) when the group spans machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from base import actors
from nuwa.errors import BadRequest
from nuwa.core.peer_auth import SECRET_BYTES as PEER_SECRET_BYTES
from nuwa.replica import LOOPBACK, NODE_IP, NuwaReplica
from nuwa.io.server import ServerConfig

logger = logging.getLogger(__name__)

GROUP_SIZES = (1, 3, 5)
GROUP_START_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 120.0  # a new replica must reach the leader's commit index within this
CONF_CHANGE_TIMEOUT_S = 30.0  # one membership change, including waiting for a leader
ADMIN_CALL_TIMEOUT_S = 10.0  # one admin request or status probe to a replica
NAME_RELEASE_TIMEOUT_S = 10.0  # a killed replica's actor name given back by Ray's GCS
PEER_SECRET_FILE = "peer.secret"  # under <data_dir>/nuwa/


class PeerSecretError(RuntimeError):
    """The cluster's peer secret file is missing, malformed or readable by others."""


def peer_secret_path(data_dir: str) -> str:
    return os.path.join(data_dir, "nuwa", PEER_SECRET_FILE)


def load_peer_secret(data_dir: str) -> bytes:
    """The cluster's peer secret; PeerSecretError if it is absent, not PEER_SECRET_BYTES
    long, or not private to this OS user (0600)."""
    from zhongkui.files import load_secret

    return load_secret(peer_secret_path(data_dir), PEER_SECRET_BYTES, "Nuwa peer secret",
                       PeerSecretError, hint="start_group creates it")


def load_or_create_peer_secret(data_dir: str) -> bytes:
    """Create the cluster's peer secret on first use (0600, atomically: concurrent creators
    end up with the same one), then return it."""
    from zhongkui.files import load_or_create_secret

    return load_or_create_secret(peer_secret_path(data_dir), PEER_SECRET_BYTES,
                                 "Nuwa peer secret", PeerSecretError)


@dataclass
class Group:
    namespace: str
    data_dir: str
    voters: list[int]
    nodes: dict[int, str]  # replica id -> node id
    handles: dict[int, object] = field(default_factory=dict)
    addresses: dict[int, tuple[str, int]] = field(default_factory=dict)
    config: ServerConfig = ServerConfig()
    retired: list[int] = field(default_factory=list)  # ids removed by replacements (never reused)
    removing: list[int] = field(default_factory=list)  # replaced, but not yet removed
    # Zhongkui's {"enabled", "keys"} for the replicas; never in to_dict (it holds the keys).
    auth: dict | None = field(default=None, repr=False, compare=False)
    host: str = LOOPBACK  # what replicas bind: an address, or NODE_IP (each node's own)
    # The cluster's peer secret; never in to_dict or repr. None: read from the data dir.
    peer_secret: bytes | None = field(default=None, repr=False, compare=False)

    def _peer_secret(self) -> bytes:
        if self.peer_secret is None:
            self.peer_secret = load_peer_secret(self.data_dir)
        return self.peer_secret

    def _token(self):
        from zhongkui.guard import Guard

        guard = Guard(self.auth, name="nuwa-admin")
        return guard.platform_token

    def client_addresses(self) -> list[tuple[str, int]]:
        return [self.addresses[i] for i in sorted(self.addresses)]

    def replica_dir(self, rid: int) -> str:
        return os.path.join(self.data_dir, "nuwa", f"replica-{rid}")

    def next_id(self) -> int:
        return max([*self.voters, *self.retired, 0]) + 1

    def start_replica(self, rid: int, rejoin: bool = True, join: bool = False) -> tuple[str, int]:
        """(Re)start replica ``rid`` on its node; it recovers from its disk if any is left (a
        replica whose disk is gone comes back as a non-voter: see ReplicaServer._membership).
        It asks for its old port, so the addresses clients hold stay valid."""
        old_port = self.addresses.get(rid, (None, 0))[1]
        handle = NuwaReplica.options(
            name=f"nuwa-{rid}", namespace=self.namespace, lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.nodes[rid], soft=False),
            max_restarts=0,
        ).remote(rid, [] if join else self.voters, self.replica_dir(rid), self.config,
                 rejoin and not join, self.auth, self._peer_secret(), self.host)
        try:
            addr = tuple(actors.call(handle.start, old_port, cred=self._token()(),
                                     timeout_s=GROUP_START_TIMEOUT_S))
        except Exception:
            # E.g. its WAL is corrupt and it refuses to start: leave no half-started actor
            # holding the name, so a later start (after the operator's repair) can take it.
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
            raise
        self.handles[rid] = handle
        self.addresses[rid] = addr
        return addr

    def publish_peers(self) -> None:
        tok = self._token()()
        actors.call_each([h.set_peers for h in self.handles.values()], self.addresses, cred=tok,
                         timeout_s=GROUP_START_TIMEOUT_S)

    def stop_replica(self, rid: int, kill: bool = True) -> None:
        h = self.handles.pop(rid, None)
        if h is not None:
            if not kill:
                actors.call(h.stop, cred=self._token()(), timeout_s=GROUP_START_TIMEOUT_S)
            ray.kill(h, no_restart=True)
            self._wait_name_released(f"nuwa-{rid}")

    def _wait_name_released(self, name: str) -> None:
        """``ray.kill`` returns before the GCS gives the name back: a replica started again
        at once would find it taken (ActorAlreadyExistsError). Wait, bounded."""
        deadline = time.monotonic() + NAME_RELEASE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                return
            time.sleep(0.05)
        logger.warning("the name %s in %s was not released within %.0f s "
                       "(NAME_RELEASE_TIMEOUT_S)", name, self.namespace, NAME_RELEASE_TIMEOUT_S)

    def to_dict(self) -> dict:
        return {"namespace": self.namespace, "data_dir": self.data_dir, "voters": self.voters,
                "nodes": {str(k): v for k, v in self.nodes.items()},
                "addresses": {str(k): list(v) for k, v in self.addresses.items()},
                "retired": list(self.retired), "removing": list(self.removing),
                "host": self.host}

    @classmethod
    def from_dict(cls, d: dict, auth: dict | None = None) -> "Group":
        return cls(namespace=d["namespace"], data_dir=d["data_dir"], voters=list(d["voters"]),
                   nodes={int(k): v for k, v in d["nodes"].items()},
                   addresses={int(k): tuple(v) for k, v in d["addresses"].items()},
                   retired=list(d.get("retired", [])), removing=list(d.get("removing", [])),
                   auth=auth, host=d.get("host", NODE_IP))  # (records before "host": node address)

    def supervise_once(self, probe_timeout_s: float = 5.0) -> list[str]:
        """Bring the group back to full strength. A replica that is gone (its actor died or
        does not answer) is restarted on its own node if that node is alive (it recovers
        from its disk). One whose node is gone, or that came back without its disk (it then
        runs as a non-voter), is replaced by a new replica on another node
        (``replace_replica``). Returns what was done."""
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        done = []
        to_replace = []
        leaders: list[tuple[int, int]] = []  # (term, replica) of those that said they lead
        for rid in list(self.voters):
            try:
                h = ray.get_actor(f"nuwa-{rid}", namespace=self.namespace)
                st = actors.call(h.status, timeout_s=probe_timeout_s)
                if st.get("stopped"):
                    # Its Raft loop stopped on a failure (a disk that failed or filled up): a
                    # restart recovers it from what is on its disk (and stops it again if the
                    # disk still refuses).
                    ray.kill(h, no_restart=True)
                    raise RuntimeError(f"nuwa-{rid} had stopped")
                self.handles[rid] = h
                if st.get("role") == "LEADER" and isinstance(st.get("term"), int):
                    leaders.append((st["term"], rid))
                if st.get("voter") is False and rid in st.get("voters", ()):
                    to_replace.append(rid)  # lost its disk: a non-voter for good
                continue
            except Exception:
                pass
            self.handles.pop(rid, None)
            if self.nodes[rid] not in alive:
                to_replace.append(rid)
                continue
            try:
                self.start_replica(rid, rejoin=True)
                done.append(f"restarted nuwa-{rid} on node {self.nodes[rid][:12]}")
            except Exception as e:
                done.append(f"could not restart nuwa-{rid}: {e!r}")
        if done:
            self.publish_peers()
        done += self._finish_removals()
        for rid in to_replace:
            if rid in self.removing:
                continue
            used = {self.nodes[r] for r in self.voters if r != rid}
            free = sorted(alive - used)
            if not free and len(alive) >= len(self.voters):
                continue  # (cannot happen: one replica per node when there are enough)
            node = free[0] if free else (sorted(alive)[0] if alive else None)
            if node is None:
                continue
            try:
                new = self.replace_replica(rid, node)
                done.append(f"replaced nuwa-{rid} by nuwa-{new} on node {node[:12]}")
            except Exception as e:
                done.append(f"could not replace nuwa-{rid}: {e!r}")
        self.leader = max(leaders) if leaders else None  # (term, replica) seen this round
        return done

    # ------------------------------------------------------------ membership

    def _admin(self, coro_fn, timeout_s: float):
        """Run ``coro_fn(client)`` against the group with a fresh asyncio client."""
        from nuwa.client import AsyncNuwa

        async def run():
            c = AsyncNuwa(self.client_addresses(), timeout_s=timeout_s, token=self._token())
            try:
                return await coro_fn(c)
            finally:
                await c.close()
        return asyncio.run(run())

    def _change(self, change: str, member: int) -> dict:
        """One membership change, retried while the group is busy or electing, until
        CONF_CHANGE_TIMEOUT_S. An answer lost on the way is settled by reading the
        configuration back (a change is applied at most once: a repeat is refused)."""
        from nuwa import errors as E

        deadline = time.monotonic() + CONF_CHANGE_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return self._admin(lambda c: c.change_membership(change, member), ADMIN_CALL_TIMEOUT_S)
            except (E.Unavailable, E.OutcomeUnknown, E.Timeout, E.NotLeader) as e:
                last = e
            except E.BadRequest as e:
                if self._applied(change, member):
                    return {}
                raise e
            if self._applied(change, member):
                return {}
            time.sleep(0.2)
        raise E.Unavailable(f"membership change {change} {member} did not commit within "
                            f"CONF_CHANGE_TIMEOUT_S={CONF_CHANGE_TIMEOUT_S}s: {last!r}")

    def leader_status(self) -> dict:
        """The status of the replica that currently leads (highest term among leaders)."""
        best = None
        for rid, h in list(self.handles.items()):
            try:
                st = actors.call(h.status, timeout_s=ADMIN_CALL_TIMEOUT_S)
            except Exception:
                continue
            if st.get("role") == "LEADER" and (best is None or st["term"] > best["term"]):
                best = st
        if best is None:
            raise RuntimeError("the Nuwa group has no leader right now")
        return best

    def _applied(self, change: str, member: int) -> bool:
        try:
            st = self.leader_status()
        except RuntimeError:
            return False
        voters, learners = set(st.get("voters", ())), set(st.get("learners", ()))
        if st.get("commit", 0) < st.get("conf_index", 0):
            return False
        return {"add_learner": member in learners | voters, "promote": member in voters,
                "remove": member not in voters | learners}[change]

    def replace_replica(self, old: int, node: str) -> int:
        """Replace replica ``old`` by a new replica (a new id, an empty disk) on ``node``:
        add it as a learner, wait until it has caught up, promote it, hand the leadership
        away if ``old`` leads, then remove ``old`` and stop it. Each step is one
        single-server membership change, so the group never needs more than its usual
        majority. Returns the new id."""
        new = self.next_id()
        self.nodes[new] = node
        self.start_replica(new, join=True)
        try:
            self.publish_peers()
            self._change("add_learner", new)
            self._catch_up_and_swap(old, new)
        except BaseException:
            if new in self.voters:
                raise  # swapped in already; only the clean-up after the removal failed
            if self._applied("promote", new):
                # A voter now: it must keep running. Supervise it with the others; the
                # next round only removes the old one (``_finish_removals``).
                self.voters.append(new)
                self.removing.append(old)
                self._record()
                raise
            # Stop the newcomer; the next round tries again under the same id (it may
            # already be a learner, which the next add_learner recognises) with its disk.
            try:
                self.stop_replica(new)
            except Exception:
                pass
            raise
        return new

    def _finish_removals(self) -> list[str]:
        done = []
        for old in list(self.removing):
            try:
                self._change("remove", old)
            except Exception as e:
                done.append(f"could not remove nuwa-{old}: {e!r}")
                continue
            self.removing.remove(old)
            self._retire(old)
            done.append(f"removed nuwa-{old}")
        return done

    def _catch_up_and_swap(self, old: int, new: int) -> None:
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        target = self.leader_status()["commit"]
        while True:
            st = actors.call(self.handles[new].status, timeout_s=ADMIN_CALL_TIMEOUT_S)
            if st.get("applied", 0) >= target:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nuwa-{new} did not catch up with the leader (commit "
                                   f"{target}) within CATCH_UP_TIMEOUT_S={CATCH_UP_TIMEOUT_S}s")
            time.sleep(0.1)
        self._change("promote", new)
        if self.leader_status()["id"] == old:
            self._admin(lambda c: c.transfer_leader(new), ADMIN_CALL_TIMEOUT_S)
            deadline = time.monotonic() + CONF_CHANGE_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    if self.leader_status()["id"] != old:
                        break
                except RuntimeError:
                    pass
                time.sleep(0.1)
        self._change("remove", old)
        self.voters = [new if v == old else v for v in self.voters]
        self._retire(old)
        self.publish_peers()

    def _retire(self, old: int) -> None:
        """``old`` is out of the configuration: stop it and forget it (its id is never reused)."""
        try:
            self.stop_replica(old)
        except Exception:
            pass  # already gone with its node
        self.voters = [v for v in self.voters if v != old]
        self.retired.append(old)
        self.nodes.pop(old, None)
        self.addresses.pop(old, None)
        self._record()

    def _record(self) -> None:
        """Keep ``group.json`` current: a later ``start_group`` restarts these members."""
        marker = os.path.join(self.data_dir, "nuwa", "group.json")
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker + ".tmp", "w") as f:
            json.dump({"voters": self.voters, "nodes": self.nodes, "retired": self.retired,
                       "removing": self.removing}, f)
        os.replace(marker + ".tmp", marker)

    def stop(self) -> None:
        for rid in list(self.handles):
            try:
                self.stop_replica(rid)
            except Exception:
                pass


def start_group(size: int, data_dir: str, namespace: str,
                config: ServerConfig = ServerConfig(), auth: dict | None = None,
                host: str | None = None, ports: list[int] | None = None) -> Group:
    """Start (or restart) the group's replicas. ``host``: what they bind -- an address, or
    ``NODE_IP`` for each node's own; default loopback when every Ray node is on one machine,
    else ``NODE_IP``. ``ports``: a fixed port per replica, in voter order (none: free ones).
    The cluster's peer secret is created here on first start."""
    if size not in GROUP_SIZES:
        raise BadRequest(f"Nuwa group size {size} is not supported; expected one of {GROUP_SIZES}")
    alive_nodes = [n for n in ray.nodes() if n.get("Alive")]
    alive = sorted(n["NodeID"] for n in alive_nodes)
    if not alive:
        raise BadRequest("no alive Ray node to place Nuwa replicas on")
    if host is None:
        machines = {n.get("NodeManagerAddress") for n in alive_nodes}
        host = LOOPBACK if len(machines) == 1 else NODE_IP
    peer_secret = load_or_create_peer_secret(data_dir)
    # Remember that this group exists: any later start is a *rejoin*, so a replica that finds
    # no disk (a new host, a wiped one) comes back as a non-voter instead of voting with an
    # empty log and overwriting committed entries. Replacements update the record.
    marker = os.path.join(data_dir, "nuwa", "group.json")
    existed = os.path.exists(marker)
    voters = list(range(1, size + 1))
    recorded_nodes: dict[int, str] = {}
    retired: list[int] = []
    removing: list[int] = []
    if existed:
        with open(marker) as f:
            rec = json.load(f)
        removing = list(rec.get("removing", []))
        if len([v for v in rec["voters"] if v not in removing]) != size:
            raise BadRequest(f"the Nuwa group in {data_dir} has {len(rec['voters'])} voters "
                             f"{rec['voters']}; asked for {size} replicas. Changing the group "
                             f"size is not supported by `fuxi up`: use --nuwa-replicas "
                             f"{len(rec['voters'])}")
        voters = list(rec["voters"])
        recorded_nodes = {int(k): v for k, v in rec.get("nodes", {}).items()}
        retired = list(rec.get("retired", []))
    nodes = {rid: alive[i % len(alive)] for i, rid in enumerate(voters)}  # spread; share when few
    for rid, n in recorded_nodes.items():
        if rid in nodes and n in alive:
            nodes[rid] = n  # a replica goes back to its disk
    g = Group(namespace=namespace, data_dir=data_dir, voters=voters, nodes=nodes, config=config,
              retired=retired, removing=removing, auth=auth, host=host, peer_secret=peer_secret)
    if not existed:
        g._record()
    for rid, port in zip(voters, ports or []):
        g.addresses[rid] = (host, int(port))  # start_replica asks for the port it had
    for rid in voters:
        # A node that just died may still be listed alive for a moment: if a replica cannot
        # be placed there, try the other nodes before giving up.
        tried: list[str] = []
        while True:
            try:
                g.start_replica(rid, rejoin=existed)
                break
            except Exception:
                tried.append(g.nodes[rid])
                left = [n for n in alive if n not in tried]
                if not left:
                    raise
                g.nodes[rid] = left[0]
    g.publish_peers()
    return g
