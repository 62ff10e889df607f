"""``metafs mount MOUNTPOINT`` and ``metafs umount MOUNTPOINT``."""

from __future__ import annotations

import argparse
import errno
import os
from typing import Any

from .common import Common, add_logging, settings_from


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("mount", help="mount metafs with FUSE (returns once it is ready)",
                        description="Mount metafs on MOUNTPOINT. Without --namenode an "
                        "embedded namenode runs in the mount process on --data DIR.")
    common(sp)
    sp.add_argument("mountpoint")
    sp.add_argument("-f", "--foreground", action="store_true",
                    help="stay attached (serve in this process until unmounted)")
    sp.add_argument("--log-file", help="where a background mount logs")
    sp.add_argument("--attr-timeout", type=float, dest="fuse_attr_timeout",
                    help="seconds attributes may be cached (default 1; 60 on a mount of "
                    "an embedded namenode, which follows its changelog)")
    sp.add_argument("--entry-timeout", type=float, dest="fuse_entry_timeout",
                    help="seconds name lookups may be cached (default: as --attr-timeout)")
    sp.add_argument("--negative-timeout", type=float, dest="fuse_negative_timeout",
                    help="seconds 'no such file' may be cached (default 0)")
    sp.add_argument("--follow-changes", dest="fuse_follow_changes",
                    choices=["auto", "on", "off"],
                    help="follow the changelog to drop caches of what other clients change "
                    "(default auto: on)")
    sp.add_argument("--no-follow-changes", dest="fuse_follow_changes", action="store_const",
                    const="off", help="same as --follow-changes off")
    sp.add_argument("--no-kernel-cache", dest="fuse_kernel_cache", action="store_const",
                    const=False, help="drop the page cache of a file at every open")
    sp.add_argument("--write-buffer", type=int, dest="fuse_write_buffer",
                    help="bytes of small writes coalesced per open file")
    sp.add_argument("--readahead", type=int, dest="fuse_readahead",
                    help="bytes fetched ahead by sequential readers")
    sp.add_argument("--cache-dir", dest="block_cache_dir",
                    help="local directory caching blocks of a remote store ('auto': the "
                    "user's cache directory for S3 stores; 'off': none)")
    sp.add_argument("--cache-size", type=_mib, dest="block_cache_size", metavar="MiB",
                    help="MiB the block cache may hold (least recently used go first)")
    sp.add_argument("--rpc-timeout", type=float, dest="fuse_rpc_timeout",
                    help="seconds before a namenode call fails with EIO (default 10)")
    sp.add_argument("--no-access-events", dest="fuse_access_events", action="store_const",
                    const=False, help="do not record which processes read and wrote files")
    sp.add_argument("--project", dest="fuse_project", metavar="NAME",
                    help="mount project NAME: its tree /Projects/NAME is the mount's root, "
                    "and the credential must be one of NAME's (metafs project credential)")
    sp.add_argument("--allow-other", dest="fuse_allow_other", action="store_const",
                    const=True, help="let other users use the mount")
    sp.add_argument("--single-threaded", dest="fuse_threads", action="store_const",
                    const=False, help="serve FUSE requests on one thread")
    sp.add_argument("--local-locks", dest="fuse_global_locks", action="store_const",
                    const=False, help="let the kernel keep fcntl/flock locks (coherent on "
                    "this machine only) instead of the namenode")
    sp.add_argument("--metrics-port", type=int, dest="metrics_port",
                    help="serve Prometheus metrics of the mount on this port")
    sp.add_argument("--metrics-listen", dest="metrics_listen",
                    help="address for the metrics endpoint (default 127.0.0.1)")
    g = sp.add_argument_group("security", "for a namenode that serves TLS or requires "
                              "authentication (the tls_* and token settings apply too)")
    g.add_argument("--tls-ca", dest="tls_ca",
                   help="PEM CA bundle to verify the namenode's certificate (turns on TLS)")
    g.add_argument("--tls-client-cert", dest="tls_client_cert",
                   help="PEM client certificate (mutual TLS; turns on TLS)")
    g.add_argument("--tls-client-key", dest="tls_client_key", help="PEM key of --tls-client-cert")
    g.add_argument("--tls-server-name", dest="tls_server_name",
                   help="name to expect in the namenode's certificate")
    g.add_argument("--token-file", dest="token_file",
                   help="file holding the bearer token (or METAFS_TOKEN / token in the "
                   "config file); a mount used by several users needs a trusted identity")
    sp.set_defaults(func=cmd_mount)

    sp = sub.add_parser("umount", help="unmount a metafs mount")
    sp.add_argument("mountpoint")
    sp.add_argument("-l", "--lazy", action="store_true", help="detach now, clean up when "
                    "no longer busy")
    add_logging(sp)
    sp.set_defaults(func=cmd_umount)


_MOUNT_FIELDS = ("fuse_attr_timeout", "fuse_entry_timeout", "fuse_negative_timeout",
                 "fuse_follow_changes", "fuse_kernel_cache", "fuse_write_buffer",
                 "fuse_readahead", "fuse_rpc_timeout", "fuse_access_events", "fuse_project",
                 "fuse_allow_other", "fuse_threads", "fuse_global_locks", "tls_ca",
                 "tls_client_cert", "tls_client_key", "tls_server_name", "token_file",
                 "metrics_port", "metrics_listen", "block_cache_dir", "block_cache_size")


def _mib(value: str) -> int:
    """``--cache-size``: a whole number of MiB, as bytes."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MiB: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a cache size cannot be negative: {n}")
    return n * 1024 * 1024


def mount_settings(args: argparse.Namespace) -> Any:
    extra = {k: getattr(args, k, None) for k in _MOUNT_FIELDS}
    s = settings_from(args, **extra)
    # relative paths mean the caller's directory (the mount process runs in /)
    paths = {k: os.path.abspath(v) for k in ("tls_ca", "tls_client_cert", "tls_client_key",
                                             "token_file") if (v := getattr(s, k))}
    if s.block_cache_dir.strip().lower() not in ("", "auto", "off", "none"):
        paths["block_cache_dir"] = os.path.abspath(s.block_cache_dir)
    return s.with_(data_dir=os.path.abspath(s.data_dir), **paths)


def cmd_mount(args: argparse.Namespace) -> int:
    from ..fuse.mount import check_mountpoint, run_mount, spawn_mount

    settings = mount_settings(args)
    check_mountpoint(args.mountpoint)  # also in the foreground, before FUSE is asked
    if args.foreground:
        return run_mount(settings, args.mountpoint)
    spawn_mount(settings, args.mountpoint, log_file=args.log_file)
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from ..fuse.mount import unmount

    # a missing mount point is ENOENT; any other failure to look it up (ENOTCONN: a mount
    # whose process died) is what unmounting is for
    try:
        os.lstat(args.mountpoint)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "mount point does not exist",
                                args.mountpoint) from None
    except OSError:
        pass
    unmount(args.mountpoint, lazy=args.lazy)
    return 0

