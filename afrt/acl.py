"""Least privilege on Redis: the ACL rules of each role in a swarm (`af swarm acl`, docs/security.md).

Every key of swarm NAME is under ``af:NAME:`` (`afrt.redisbus.Keys`), so a role's key pattern
confines its users to one swarm; its command categories confine what they may do there:

- ``worker`` (`af run --bus`): reads and writes the swarm's streams and hashes (tasks, results,
  members, heartbeats, the bus topics) and runs the transport's scripts;
- ``submitter`` (`af submit`): the same commands (it adds tasks and reads and trims results);
- ``observer`` (`af swarm status|watch`): read-only commands on the swarm's keys;
- ``admin``: every command on the swarm's keys except the dangerous ones (FLUSHALL, CONFIG, ...).

No role may touch another swarm's keys, nor run an administrative command; tests start a
redis-server with one user per role and check an allowed and a forbidden operation of each, and a
whole run with a worker and a submitter logged in as those users.
"""

from __future__ import annotations

__all__ = ["ROLES", "acl_rules"]

#: the command categories (Redis ACL) of the roles that run the transport
_TRANSPORT = ("-@all", "+@read", "+@write", "+@stream", "+@hash", "+@string", "+@set", "+@keyspace",
              "+@scripting", "+@connection", "+@transaction", "-@dangerous", "+info", "+client|setname",
              "+client|id", "+client|getname")
#: role -> its command categories
ROLES = {
    "worker": _TRANSPORT,
    "submitter": _TRANSPORT,
    "observer": ("-@all", "+@read", "+@connection", "-@dangerous", "+info", "+client|setname"),
    "admin": ("-@all", "+@all", "-@dangerous"),
}


def acl_rules(swarm: str, role: str) -> str:
    """Return the Redis ACL rules of ``role`` in ``swarm``, for ``ACL SETUSER NAME on >PASSWORD RULES``.

    Raises:
        ValueError: for an unknown role, or a swarm name that could widen the key pattern.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role `{role}`: {', '.join(ROLES)}")
    if not swarm or any(c in swarm for c in "*?[]\\ :"):
        raise ValueError(f"the swarm name `{swarm}` holds a character that Redis key patterns read specially")
    reading = role == "observer"
    keys = f"%R~af:{swarm}:*" if reading else f"~af:{swarm}:*"
    return " ".join(("resetkeys", keys, "resetchannels", *ROLES[role]))
