"""Leadership terms and leader discovery, as pure logic (issue 16 part 3).

FuxiMaster runs as N candidates (actor names ``candidate_names(base, n)``); the one leading a
Nuwa election serves, the others answer ``NotLeader`` naming it. Each leadership has a
*term*: the version of the Nuwa node ``/fuxi/leader`` after the winner set it, so a later
leader's term is always greater. Two rules make a deposed leader (paused, partitioned, still
believing it leads) harmless:

* every write it makes to Nuwa is a transaction that first checks ``/fuxi/leader`` still
  has its term as version (``fuxi.io.store.NuwaStore`` with a fence) -- refused otherwise;
* a JobMaster or FuxiAgent remembers the highest term it has heard (``TermGate``) and refuses
  a reply or command carrying an older one.

Discovery (one rule, used by the client, JobMasters and ``fuxi up``): call the handle you
have; a ``NotLeader`` names the leader -- go there; a dead handle, or ``NotLeader`` without a
name, means trying the candidates in their order (``next_candidate``). Every loop of it is
bounded by a named limit of its caller.
"""

from __future__ import annotations

from typing import Any, Sequence

from fuxi.errors import BadInput, StaleTerm

LEADER_TERM_MAX = (1 << 63) - 1  # a Nuwa version is an int64
CANDIDATES_MAX = 5  # FuxiMaster candidates one cluster may run
CANDIDATE_NAME_CHARS_MAX = 128


def check_term(term: Any, what: str = "term") -> int:
    """A term as received from a caller: an int from 0 (no election: one master) to
    LEADER_TERM_MAX; anything else is refused saying so."""
    if isinstance(term, bool) or not isinstance(term, int) or not 0 <= term <= LEADER_TERM_MAX:
        raise BadInput(f"{what}: got {str(term)[:40]!r}, expected an integer from 0 to "
                       f"{LEADER_TERM_MAX} (LEADER_TERM_MAX)")
    return term


def candidate_names(base: str, n: int) -> list[str]:
    """The actor names of a cluster's FuxiMaster candidates: ``base`` (the first, the name
    FuxiMaster always had), then ``base-2`` .. ``base-n``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= CANDIDATES_MAX:
        raise BadInput(f"FuxiMaster candidates: got {str(n)[:40]!r}, expected an integer from "
                       f"1 to {CANDIDATES_MAX} (CANDIDATES_MAX)")
    if not isinstance(base, str) or not 0 < len(base) <= CANDIDATE_NAME_CHARS_MAX - 3:
        raise BadInput(f"FuxiMaster name: got {str(base)[:40]!r}, expected a non-empty string "
                       f"of at most {CANDIDATE_NAME_CHARS_MAX - 3} characters")
    return [base] + [f"{base}-{i}" for i in range(2, n + 1)]


def check_candidates(names: Any) -> list[str]:
    """A candidate list as received (a sync reply, a spawn argument), bounded and checked."""
    if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= CANDIDATES_MAX:
        raise BadInput(f"candidates: expected a list of 1 to {CANDIDATES_MAX} names, got "
                       f"{str(names)[:80]!r}")
    for n in names:
        if not isinstance(n, str) or not 0 < len(n) <= CANDIDATE_NAME_CHARS_MAX:
            raise BadInput(f"candidates: {str(n)[:40]!r} is not a name of 1 to "
                           f"{CANDIDATE_NAME_CHARS_MAX} characters")
    return list(names)


class TermGate:
    """The highest leadership term heard so far. ``admit`` takes a reply's or command's
    term: an older one raises ``StaleTerm`` (its sender was deposed), a newer one is
    remembered. Term 0 means "no election" and is always equal to itself."""

    def __init__(self, seen: int = 0):
        self.seen = check_term(seen)
        self.refused = 0  # stale replies and commands turned away (for status and tests)

    def admit(self, term: Any, what: str) -> int:
        term = check_term(term, f"{what}: term")
        if term < self.seen:
            self.refused += 1
            raise StaleTerm(f"{what}: from a FuxiMaster of term {term}, but term {self.seen} "
                            f"has been seen; the sender was deposed -- refused")
        self.seen = term
        return term

    def fresh(self, term: Any) -> bool:
        """``admit`` as a yes/no (a malformed term counts as stale)."""
        try:
            self.admit(term, "reply")
            return True
        except (StaleTerm, BadInput):
            return False


def next_candidate(candidates: Sequence[str], current: str | None, hint: str | None,
                   tried: int) -> str | None:
    """Whom to ask next after ``current`` failed: the leader ``hint`` a standby gave (when it
    is a known candidate and not ``current``), else the candidate after ``current`` in order;
    None once ``tried`` reached the number of candidates (every one was asked: wait, then
    start over)."""
    names = list(candidates)
    if not names or tried >= len(names):
        return None
    if hint is not None and hint in names and hint != current:
        return hint
    if current in names:
        return names[(names.index(current) + 1) % len(names)]
    return names[0]


def respawn_places(candidates: Sequence[str], me: str, live: dict[str, str | None],
                   alive_nodes: Sequence[str]) -> dict[str, str]:
    """Where to create again the candidates that are gone for good (their actor dead, e.g. with
    the node it was pinned to): ``live`` maps each candidate to the node its live actor runs
    on, or None when there is no live actor of that name; ``me`` (the leader) is never
    respawned. Each one goes to an alive node that holds no live candidate yet (other than the
    leader's where possible), so a second node failure still leaves a standby; when every node
    holds one, to a node other than the leader's; on a one-node cluster, next to the leader
    (a standby for its process). Deterministic: nodes in sorted order. {} when nothing is gone
    or no node is alive."""
    alive = sorted(set(alive_nodes))
    if not alive:
        return {}
    taken = {n for n in live.values() if n is not None}
    mine = live.get(me)
    places: dict[str, str] = {}
    for name in candidates:
        if name == me or live.get(name) is not None:
            continue
        free = [n for n in alive if n not in taken and n != mine]
        others = [n for n in alive if n != mine]
        node = (free or others or alive)[0]
        places[name] = node
        taken.add(node)
    return places
