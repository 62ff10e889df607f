"""A project mount (``metafs mount MNT --project NAME``): one project's tree as the mount.

The mount's root is the project's directory ``/Projects/NAME``, and every request is made
as the credential's identity in that project: the namenode binds a project credential to
the member's project uid, the project's group and the groups of what is shared into the
project, and checks the project boundary on every write. The mount refuses to start with a
credential of another project, or with one that is no project credential at all.

Without ``--allow-other`` only the user who mounted can use the mount (the kernel sees to
that), and that user's requests are made as the project identity. With ``--allow-other``
a project credential still stands for one person: requests of any other local user are
refused with EACCES, so no one else acts as the credential's holder in the project.

A project *gateway* mounts with the credential of a service identity a data owner has
authorized as the project's gateway (``metafs project gateway NAME --service SERVICE``):
each request claims the local caller's uid in the project, and the namenode maps it to the
project identity of the member that uid is, or refuses it (EACCES) when it is no member's.
The mount's own calls (its session, releasing handles no process holds) are the
service's, as in any gateway.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from ..client.auth import project_call
from ..client.client import Client
from ..proto import metafs_pb2 as pb
from .handles import FuseError

PROJECTS_DIR = "/Projects"


@dataclass(frozen=True)
class ProjectMount:
    """The project a mount works in, its root inode and the identity it acts as."""

    name: str
    root_ino: int
    identity: str  # "alice@A", or the gateway's service identity
    owner_uid: int  # the local user whose requests the mount serves (but a gateway's)
    gateway: bool = False  # acts for every local user who is a member, as that member

    @property
    def root_path(self) -> str:
        return f"{PROJECTS_DIR}/{self.name}"

    def caller(self, client: Client, uid: int, pid: int) -> pb.Caller:
        """The identity for a request by local ``uid`` (process ``pid``): the project
        identity for the user who mounted, EACCES for anyone else; through a gateway,
        ``uid`` in the project (the namenode maps it to that member, or refuses it)."""
        if self.gateway:
            return client.identity(uid, uid, (), pid, project=self.name)
        if uid != self.owner_uid:
            raise FuseError(errno.EACCES)
        me = client.caller
        return client.identity(me.uid, me.gid, me.groups, pid)


def check_credential(who: dict[str, Any], project: str) -> None:
    """Refuse (EACCES, saying why) a credential that does not work in ``project``."""
    have = str(who.get("project") or "")
    if have == project:
        return
    name = who.get("name") or "this credential"
    if have:
        raise PermissionError(errno.EACCES, f"the credential {name!r} works in project "
                              f"{have!r}, not {project!r}: mount with a credential of "
                              f"{project!r} (metafs project credential {project} USER)")
    raise PermissionError(errno.EACCES, f"{name!r} is not a project credential: a project "
                          f"mount needs one of {project!r} (metafs project credential "
                          f"{project} USER)")


def open_project(client: Client, project: str) -> ProjectMount:
    """Check that ``client``'s credential works in ``project`` and find the project's
    directory (the mount's root)."""
    transport = client.transport
    if not getattr(transport, "authenticated", False):
        raise PermissionError(errno.EACCES, f"a project mount needs a namenode that "
                              f"authenticates and a credential of project {project!r} "
                              "(token_file or METAFS_TOKEN)")
    who = transport.whoami()
    name = str(who.get("name") or "")
    gateway = bool(who.get("trusted")) and not who.get("project")
    if gateway:
        check_gateway(name, project, project_call(transport, {"action": "gateways",
                                                              "project": project}))
    else:
        check_credential(who, project)
    root = client.inodes.resolve(f"{PROJECTS_DIR}/{project}")
    return ProjectMount(project, root.ino, name, os.getuid(), gateway)


def check_gateway(service: str, project: str, gateways: list[str]) -> None:
    """Refuse (EACCES, saying why) a service not authorized as ``project``'s gateway."""
    if service not in gateways:
        raise PermissionError(errno.EACCES, f"the service identity {service!r} is not a "
                              f"gateway of project {project!r}: a data owner of {project!r} "
                              f"authorizes it (metafs project gateway {project} --service "
                              f"{service})")
