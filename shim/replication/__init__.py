"""Replication among the servers of one shared log: a leader, and followers that forward to it.

A layer of its own between the API (gRPC servicers) and the MVCC core, which stays single-node:
the core knows one log and one committer; this layer decides which server's committer makes a
write. With ``--listen-peer-urls`` the replicas of one Cosmos container elect a leader through a
lease record in the container (:mod:`election`); a follower sends every write to the leader's
peer listener (:mod:`forwarding`, served by ``api.peer``) and answers it once its own store has
applied it (:mod:`writes`); the leader pushes every committed batch to the followers
(:mod:`push`), so that their watches see writes without reading the log, which they then tail
only every few seconds. One server appending means no conflicts on the log head: the
throughput of several replicas is that of one, instead of each one's appends failing against the
others'. The leader record also says who takes part (MemberList): the leader writes itself and the
followers whose push stream is open into every renewal, and the followers read it each round, so
that idle replicas make one request per round (a renewal or a read) and no heartbeats.

Safety of the data does not depend on the election. The log's compare-and-swap (creating the
document of revision head+1) stays what orders writes: two servers that both believe they lead for
a moment (a paused leader that wakes up after its lease ran out) conflict on the log head like any
two writers, the loser catches up and evaluates again, and no revision is lost or written twice.
Reads are served by each replica from its own store. A linearizable read waits until that store
has every acknowledged write (:mod:`reads`): the leader's at once while it holds its term, a
follower's once it has the leader's read index (raft's ReadIndex: one round trip between
replicas), anyone's by reading the log when there is no leader to ask. A leader holds its term
once it has fenced the log (:mod:`fencing`): then no other server's append can land, so that a
deposed leader that wakes up cannot make any replica answer stale data.

Without ``--listen-peer-urls`` there is no election and every replica writes the log itself, as
before this layer existed (a single server, the embedded store, and tools such as ``migrate``).
"""
