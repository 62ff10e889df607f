from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TimeHow(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_OMIT: _ClassVar[TimeHow]
    TIME_NOW: _ClassVar[TimeHow]
    TIME_SET: _ClassVar[TimeHow]

class RenameFlags(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RENAME_PLAIN: _ClassVar[RenameFlags]
    RENAME_NOREPLACE: _ClassVar[RenameFlags]
    RENAME_EXCHANGE: _ClassVar[RenameFlags]

class WriteFlags(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_PLAIN: _ClassVar[WriteFlags]
    WRITE_REPLACED: _ClassVar[WriteFlags]

class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_UNSPECIFIED: _ClassVar[Op]
    OP_CREATE: _ClassVar[Op]
    OP_MKDIR: _ClassVar[Op]
    OP_MKNOD: _ClassVar[Op]
    OP_SYMLINK: _ClassVar[Op]
    OP_LINK: _ClassVar[Op]
    OP_UNLINK: _ClassVar[Op]
    OP_RMDIR: _ClassVar[Op]
    OP_RENAME: _ClassVar[Op]
    OP_SETATTR: _ClassVar[Op]
    OP_WRITE: _ClassVar[Op]
    OP_SETXATTR: _ClassVar[Op]
    OP_REMOVEXATTR: _ClassVar[Op]
    OP_FREE: _ClassVar[Op]
    OP_ACCESS: _ClassVar[Op]
    OP_RUN: _ClassVar[Op]
    OP_PROJECT: _ClassVar[Op]

class LockKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOCK_POSIX: _ClassVar[LockKind]
    LOCK_FLOCK: _ClassVar[LockKind]

class LockType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOCK_TYPE_UNSPECIFIED: _ClassVar[LockType]
    LOCK_READ: _ClassVar[LockType]
    LOCK_WRITE: _ClassVar[LockType]
    LOCK_UNLOCK: _ClassVar[LockType]
TIME_OMIT: TimeHow
TIME_NOW: TimeHow
TIME_SET: TimeHow
RENAME_PLAIN: RenameFlags
RENAME_NOREPLACE: RenameFlags
RENAME_EXCHANGE: RenameFlags
WRITE_PLAIN: WriteFlags
WRITE_REPLACED: WriteFlags
OP_UNSPECIFIED: Op
OP_CREATE: Op
OP_MKDIR: Op
OP_MKNOD: Op
OP_SYMLINK: Op
OP_LINK: Op
OP_UNLINK: Op
OP_RMDIR: Op
OP_RENAME: Op
OP_SETATTR: Op
OP_WRITE: Op
OP_SETXATTR: Op
OP_REMOVEXATTR: Op
OP_FREE: Op
OP_ACCESS: Op
OP_RUN: Op
OP_PROJECT: Op
LOCK_POSIX: LockKind
LOCK_FLOCK: LockKind
LOCK_TYPE_UNSPECIFIED: LockType
LOCK_READ: LockType
LOCK_WRITE: LockType
LOCK_UNLOCK: LockType

class Caller(_message.Message):
    __slots__ = ("uid", "gid", "groups", "pid", "client_id", "run_id", "process", "project")
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    uid: int
    gid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    pid: int
    client_id: str
    run_id: str
    process: str
    project: str
    def __init__(self, uid: _Optional[int] = ..., gid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ..., pid: _Optional[int] = ..., client_id: _Optional[str] = ..., run_id: _Optional[str] = ..., process: _Optional[str] = ..., project: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("errno", "message", "path")
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    errno: int
    message: str
    path: str
    def __init__(self, errno: _Optional[int] = ..., message: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class Attr(_message.Message):
    __slots__ = ("ino", "mode", "nlink", "uid", "gid", "rdev", "size", "atime_ns", "mtime_ns", "ctime_ns", "btime_ns", "version", "inline", "generation", "inline_data", "inline_current")
    INO_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NLINK_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    BTIME_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATA_FIELD_NUMBER: _ClassVar[int]
    INLINE_CURRENT_FIELD_NUMBER: _ClassVar[int]
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    btime_ns: int
    version: int
    inline: bool
    generation: int
    inline_data: bytes
    inline_current: bool
    def __init__(self, ino: _Optional[int] = ..., mode: _Optional[int] = ..., nlink: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., rdev: _Optional[int] = ..., size: _Optional[int] = ..., atime_ns: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., ctime_ns: _Optional[int] = ..., btime_ns: _Optional[int] = ..., version: _Optional[int] = ..., inline: bool = ..., generation: _Optional[int] = ..., inline_data: _Optional[bytes] = ..., inline_current: bool = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("ino", "attr")
    INO_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    ino: int
    attr: Attr
    def __init__(self, ino: _Optional[int] = ..., attr: _Optional[_Union[Attr, _Mapping]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("caller", "parent", "name")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    parent: int
    name: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., parent: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("caller", "path", "start", "follow")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    path: str
    start: int
    follow: bool
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., path: _Optional[str] = ..., start: _Optional[int] = ..., follow: bool = ...) -> None: ...

class InodeRequest(_message.Message):
    __slots__ = ("caller", "ino", "open", "flags", "read_inline", "have_version")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    READ_INLINE_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    open: bool
    flags: int
    read_inline: bool
    have_version: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., open: bool = ..., flags: _Optional[int] = ..., read_inline: bool = ..., have_version: _Optional[int] = ...) -> None: ...

class SetAttrRequest(_message.Message):
    __slots__ = ("caller", "ino", "mode", "uid", "gid", "size", "atime_how", "atime_ns", "mtime_how", "mtime_ns", "handle")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ATIME_HOW_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_HOW_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_how: TimeHow
    atime_ns: int
    mtime_how: TimeHow
    mtime_ns: int
    handle: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., size: _Optional[int] = ..., atime_how: _Optional[_Union[TimeHow, str]] = ..., atime_ns: _Optional[int] = ..., mtime_how: _Optional[_Union[TimeHow, str]] = ..., mtime_ns: _Optional[int] = ..., handle: _Optional[int] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("caller", "parent", "name", "mode", "umask", "exclusive", "open", "flags", "rdev", "path")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UMASK_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    parent: int
    name: str
    mode: int
    umask: int
    exclusive: bool
    open: bool
    flags: int
    rdev: int
    path: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., parent: _Optional[int] = ..., name: _Optional[str] = ..., mode: _Optional[int] = ..., umask: _Optional[int] = ..., exclusive: bool = ..., open: bool = ..., flags: _Optional[int] = ..., rdev: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class OpenReply(_message.Message):
    __slots__ = ("attr", "handle", "data", "has_data", "layout")
    ATTR_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HAS_DATA_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    attr: Attr
    handle: int
    data: bytes
    has_data: bool
    layout: LayoutReply
    def __init__(self, attr: _Optional[_Union[Attr, _Mapping]] = ..., handle: _Optional[int] = ..., data: _Optional[bytes] = ..., has_data: bool = ..., layout: _Optional[_Union[LayoutReply, _Mapping]] = ...) -> None: ...

class MkdirRequest(_message.Message):
    __slots__ = ("caller", "parent", "name", "mode", "umask")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UMASK_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    parent: int
    name: str
    mode: int
    umask: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., parent: _Optional[int] = ..., name: _Optional[str] = ..., mode: _Optional[int] = ..., umask: _Optional[int] = ...) -> None: ...

class NameRequest(_message.Message):
    __slots__ = ("caller", "parent", "name")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    parent: int
    name: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., parent: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class RenameRequest(_message.Message):
    __slots__ = ("caller", "src_parent", "src_name", "dst_parent", "dst_name", "flags")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SRC_PARENT_FIELD_NUMBER: _ClassVar[int]
    SRC_NAME_FIELD_NUMBER: _ClassVar[int]
    DST_PARENT_FIELD_NUMBER: _ClassVar[int]
    DST_NAME_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    src_parent: int
    src_name: str
    dst_parent: int
    dst_name: str
    flags: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., src_parent: _Optional[int] = ..., src_name: _Optional[str] = ..., dst_parent: _Optional[int] = ..., dst_name: _Optional[str] = ..., flags: _Optional[int] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("caller", "ino", "new_parent", "new_name")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    NEW_PARENT_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    new_parent: int
    new_name: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., new_parent: _Optional[int] = ..., new_name: _Optional[str] = ...) -> None: ...

class SymlinkRequest(_message.Message):
    __slots__ = ("caller", "parent", "name", "target")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    parent: int
    name: str
    target: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., parent: _Optional[int] = ..., name: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ReadlinkReply(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: str
    def __init__(self, target: _Optional[str] = ...) -> None: ...

class ReadDirRequest(_message.Message):
    __slots__ = ("caller", "ino", "cursor", "limit", "attrs")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    cursor: str
    limit: int
    attrs: bool
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ..., attrs: bool = ...) -> None: ...

class DirEntry(_message.Message):
    __slots__ = ("name", "ino", "mode", "attr")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    name: str
    ino: int
    mode: int
    attr: Attr
    def __init__(self, name: _Optional[str] = ..., ino: _Optional[int] = ..., mode: _Optional[int] = ..., attr: _Optional[_Union[Attr, _Mapping]] = ...) -> None: ...

class ReadDirReply(_message.Message):
    __slots__ = ("entries", "next_cursor", "eof")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DirEntry]
    next_cursor: str
    eof: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[DirEntry, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., eof: bool = ...) -> None: ...

class StatFsRequest(_message.Message):
    __slots__ = ("caller",)
    CALLER_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ...) -> None: ...

class StatFsReply(_message.Message):
    __slots__ = ("bsize", "blocks", "bfree", "bavail", "files", "ffree", "namemax", "used_bytes", "used_inodes")
    BSIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BFREE_FIELD_NUMBER: _ClassVar[int]
    BAVAIL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FFREE_FIELD_NUMBER: _ClassVar[int]
    NAMEMAX_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_INODES_FIELD_NUMBER: _ClassVar[int]
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int
    used_bytes: int
    used_inodes: int
    def __init__(self, bsize: _Optional[int] = ..., blocks: _Optional[int] = ..., bfree: _Optional[int] = ..., bavail: _Optional[int] = ..., files: _Optional[int] = ..., ffree: _Optional[int] = ..., namemax: _Optional[int] = ..., used_bytes: _Optional[int] = ..., used_inodes: _Optional[int] = ...) -> None: ...

class GetXattrRequest(_message.Message):
    __slots__ = ("caller", "ino", "name", "size")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    name: str
    size: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class XattrReply(_message.Message):
    __slots__ = ("value", "size")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    size: int
    def __init__(self, value: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class SetXattrRequest(_message.Message):
    __slots__ = ("caller", "ino", "name", "value", "flags")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    name: str
    value: bytes
    flags: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., name: _Optional[str] = ..., value: _Optional[bytes] = ..., flags: _Optional[int] = ...) -> None: ...

class ListXattrReply(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveXattrRequest(_message.Message):
    __slots__ = ("caller", "ino", "name")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    name: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class AccessRequest(_message.Message):
    __slots__ = ("caller", "ino", "mask")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    mask: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., mask: _Optional[int] = ...) -> None: ...

class OpenRequest(_message.Message):
    __slots__ = ("caller", "ino", "flags", "path", "read_inline", "layout_blocks")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    READ_INLINE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    flags: int
    path: str
    read_inline: bool
    layout_blocks: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., flags: _Optional[int] = ..., path: _Optional[str] = ..., read_inline: bool = ..., layout_blocks: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("caller", "handle", "write")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    handle: int
    write: WriteRequest
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., handle: _Optional[int] = ..., write: _Optional[_Union[WriteRequest, _Mapping]] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("caller", "ino", "offset", "size", "handle")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    offset: int
    size: int
    handle: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., handle: _Optional[int] = ...) -> None: ...

class ReadReply(_message.Message):
    __slots__ = ("data", "inline", "attr")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    inline: bool
    attr: Attr
    def __init__(self, data: _Optional[bytes] = ..., inline: bool = ..., attr: _Optional[_Union[Attr, _Mapping]] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("caller", "ino", "offset", "data", "handle", "append", "truncate")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    offset: int
    data: bytes
    handle: int
    append: bool
    truncate: bool
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., handle: _Optional[int] = ..., append: bool = ..., truncate: bool = ...) -> None: ...

class WriteReply(_message.Message):
    __slots__ = ("attr", "written", "offset")
    ATTR_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    attr: Attr
    written: int
    offset: int
    def __init__(self, attr: _Optional[_Union[Attr, _Mapping]] = ..., written: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class BulkEntry(_message.Message):
    __slots__ = ("path", "mode", "data", "xattrs")
    class XattrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    XATTRS_FIELD_NUMBER: _ClassVar[int]
    path: str
    mode: int
    data: bytes
    xattrs: _containers.ScalarMap[str, bytes]
    def __init__(self, path: _Optional[str] = ..., mode: _Optional[int] = ..., data: _Optional[bytes] = ..., xattrs: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class BulkCreateRequest(_message.Message):
    __slots__ = ("caller", "parent", "entries", "make_parents", "exist_ok")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAKE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    parent: int
    entries: _containers.RepeatedCompositeFieldContainer[BulkEntry]
    make_parents: bool
    exist_ok: bool
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., parent: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[BulkEntry, _Mapping]]] = ..., make_parents: bool = ..., exist_ok: bool = ...) -> None: ...

class BulkCreateReply(_message.Message):
    __slots__ = ("created", "inos")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    INOS_FIELD_NUMBER: _ClassVar[int]
    created: int
    inos: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, created: _Optional[int] = ..., inos: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("caller", "client_id", "host")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    client_id: str
    host: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., client_id: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("lease_seconds", "inline_limit", "block_size", "started_ns")
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INLINE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    lease_seconds: float
    inline_limit: int
    block_size: int
    started_ns: int
    def __init__(self, lease_seconds: _Optional[float] = ..., inline_limit: _Optional[int] = ..., block_size: _Optional[int] = ..., started_ns: _Optional[int] = ...) -> None: ...

class ChangeRecord(_message.Message):
    __slots__ = ("seq", "op", "ino", "parent", "name", "old_parent", "old_name", "attr", "xattr_name", "xattr_value", "target_ino", "uid", "client_id", "run_id", "ts_ns", "flags", "extra", "nlink")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_PARENT_FIELD_NUMBER: _ClassVar[int]
    OLD_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    XATTR_NAME_FIELD_NUMBER: _ClassVar[int]
    XATTR_VALUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_INO_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    NLINK_FIELD_NUMBER: _ClassVar[int]
    seq: int
    op: Op
    ino: int
    parent: int
    name: str
    old_parent: int
    old_name: str
    attr: Attr
    xattr_name: str
    xattr_value: bytes
    target_ino: int
    uid: int
    client_id: str
    run_id: str
    ts_ns: int
    flags: int
    extra: str
    nlink: int
    def __init__(self, seq: _Optional[int] = ..., op: _Optional[_Union[Op, str]] = ..., ino: _Optional[int] = ..., parent: _Optional[int] = ..., name: _Optional[str] = ..., old_parent: _Optional[int] = ..., old_name: _Optional[str] = ..., attr: _Optional[_Union[Attr, _Mapping]] = ..., xattr_name: _Optional[str] = ..., xattr_value: _Optional[bytes] = ..., target_ino: _Optional[int] = ..., uid: _Optional[int] = ..., client_id: _Optional[str] = ..., run_id: _Optional[str] = ..., ts_ns: _Optional[int] = ..., flags: _Optional[int] = ..., extra: _Optional[str] = ..., nlink: _Optional[int] = ...) -> None: ...

class ReadChangelogRequest(_message.Message):
    __slots__ = ("caller", "after", "limit", "wait_ms")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    after: int
    limit: int
    wait_ms: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class ReadChangelogReply(_message.Message):
    __slots__ = ("records", "head")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ChangeRecord]
    head: int
    def __init__(self, records: _Optional[_Iterable[_Union[ChangeRecord, _Mapping]]] = ..., head: _Optional[int] = ...) -> None: ...

class HeadRequest(_message.Message):
    __slots__ = ("caller",)
    CALLER_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ...) -> None: ...

class HeadReply(_message.Message):
    __slots__ = ("head",)
    HEAD_FIELD_NUMBER: _ClassVar[int]
    head: int
    def __init__(self, head: _Optional[int] = ...) -> None: ...

class AccessEvent(_message.Message):
    __slots__ = ("ino", "wrote", "read", "pid", "proc_start", "cmdline", "run_id", "host", "ts_ns", "version", "uid")
    INO_FIELD_NUMBER: _ClassVar[int]
    WROTE_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PROC_START_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    ino: int
    wrote: bool
    read: bool
    pid: int
    proc_start: int
    cmdline: str
    run_id: str
    host: str
    ts_ns: int
    version: int
    uid: int
    def __init__(self, ino: _Optional[int] = ..., wrote: bool = ..., read: bool = ..., pid: _Optional[int] = ..., proc_start: _Optional[int] = ..., cmdline: _Optional[str] = ..., run_id: _Optional[str] = ..., host: _Optional[str] = ..., ts_ns: _Optional[int] = ..., version: _Optional[int] = ..., uid: _Optional[int] = ...) -> None: ...

class RecordAccessRequest(_message.Message):
    __slots__ = ("caller", "events")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    events: _containers.RepeatedCompositeFieldContainer[AccessEvent]
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AccessEvent, _Mapping]]] = ...) -> None: ...

class RunRecordRequest(_message.Message):
    __slots__ = ("caller", "run_id", "json")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    run_id: str
    json: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., run_id: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class BlockRef(_message.Message):
    __slots__ = ("index", "key", "length", "checksum")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    index: int
    key: str
    length: int
    checksum: str
    def __init__(self, index: _Optional[int] = ..., key: _Optional[str] = ..., length: _Optional[int] = ..., checksum: _Optional[str] = ...) -> None: ...

class LayoutRequest(_message.Message):
    __slots__ = ("caller", "ino", "handle", "first_index", "count", "presign")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PRESIGN_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    handle: int
    first_index: int
    count: int
    presign: bool
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., handle: _Optional[int] = ..., first_index: _Optional[int] = ..., count: _Optional[int] = ..., presign: bool = ...) -> None: ...

class LayoutReply(_message.Message):
    __slots__ = ("attr", "block_size", "blocks", "inline_data", "urls", "store_url")
    ATTR_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATA_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    STORE_URL_FIELD_NUMBER: _ClassVar[int]
    attr: Attr
    block_size: int
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    inline_data: bytes
    urls: _containers.RepeatedScalarFieldContainer[str]
    store_url: str
    def __init__(self, attr: _Optional[_Union[Attr, _Mapping]] = ..., block_size: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., inline_data: _Optional[bytes] = ..., urls: _Optional[_Iterable[str]] = ..., store_url: _Optional[str] = ...) -> None: ...

class CommitBlocksRequest(_message.Message):
    __slots__ = ("caller", "ino", "handle", "size", "blocks", "base_version", "to_blocks", "release")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    handle: int
    size: int
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    base_version: int
    to_blocks: bool
    release: bool
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., handle: _Optional[int] = ..., size: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., base_version: _Optional[int] = ..., to_blocks: bool = ..., release: bool = ...) -> None: ...

class PresignRequest(_message.Message):
    __slots__ = ("caller", "ino", "handle", "keys", "put")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    handle: int
    keys: _containers.RepeatedScalarFieldContainer[str]
    put: bool
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., handle: _Optional[int] = ..., keys: _Optional[_Iterable[str]] = ..., put: bool = ...) -> None: ...

class PresignReply(_message.Message):
    __slots__ = ("urls",)
    URLS_FIELD_NUMBER: _ClassVar[int]
    urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, urls: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("caller", "query", "limit", "offset", "sort", "count", "wait", "timeout_ms")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    query: str
    limit: int
    offset: int
    sort: str
    count: bool
    wait: bool
    timeout_ms: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., query: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., sort: _Optional[str] = ..., count: bool = ..., wait: bool = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("ino", "path", "doc_json")
    INO_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DOC_JSON_FIELD_NUMBER: _ClassVar[int]
    ino: int
    path: str
    doc_json: str
    def __init__(self, ino: _Optional[int] = ..., path: _Optional[str] = ..., doc_json: _Optional[str] = ...) -> None: ...

class SearchReply(_message.Message):
    __slots__ = ("hits", "position", "total", "took_ms", "waited_for", "hidden", "next_offset")
    HITS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    WAITED_FOR_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    position: int
    total: int
    took_ms: float
    waited_for: int
    hidden: int
    next_offset: int
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., position: _Optional[int] = ..., total: _Optional[int] = ..., took_ms: _Optional[float] = ..., waited_for: _Optional[int] = ..., hidden: _Optional[int] = ..., next_offset: _Optional[int] = ...) -> None: ...

class ProvenanceRequest(_message.Message):
    __slots__ = ("caller", "action", "path", "depth", "as_of", "version", "all_versions", "limit", "no_sync", "rebuild", "run_id")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NO_SYNC_FIELD_NUMBER: _ClassVar[int]
    REBUILD_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    action: str
    path: str
    depth: int
    as_of: str
    version: int
    all_versions: bool
    limit: int
    no_sync: bool
    rebuild: bool
    run_id: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., action: _Optional[str] = ..., path: _Optional[str] = ..., depth: _Optional[int] = ..., as_of: _Optional[str] = ..., version: _Optional[int] = ..., all_versions: bool = ..., limit: _Optional[int] = ..., no_sync: bool = ..., rebuild: bool = ..., run_id: _Optional[str] = ...) -> None: ...

class ProvenanceReply(_message.Message):
    __slots__ = ("json", "position")
    JSON_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    json: str
    position: int
    def __init__(self, json: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class LockRequest(_message.Message):
    __slots__ = ("caller", "ino", "owner", "kind", "type", "start", "end", "pid", "test_only", "report_conflict", "handle")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TEST_ONLY_FIELD_NUMBER: _ClassVar[int]
    REPORT_CONFLICT_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    ino: int
    owner: int
    kind: LockKind
    type: LockType
    start: int
    end: int
    pid: int
    test_only: bool
    report_conflict: bool
    handle: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., ino: _Optional[int] = ..., owner: _Optional[int] = ..., kind: _Optional[_Union[LockKind, str]] = ..., type: _Optional[_Union[LockType, str]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., pid: _Optional[int] = ..., test_only: bool = ..., report_conflict: bool = ..., handle: _Optional[int] = ...) -> None: ...

class LockReply(_message.Message):
    __slots__ = ("granted", "type", "start", "end", "pid", "same_session", "attr", "head")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SAME_SESSION_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    type: LockType
    start: int
    end: int
    pid: int
    same_session: bool
    attr: Attr
    head: int
    def __init__(self, granted: bool = ..., type: _Optional[_Union[LockType, str]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., pid: _Optional[int] = ..., same_session: bool = ..., attr: _Optional[_Union[Attr, _Mapping]] = ..., head: _Optional[int] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Changed(_message.Message):
    __slots__ = ("time_ns",)
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    time_ns: int
    def __init__(self, time_ns: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("caller",)
    CALLER_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ...) -> None: ...

class SessionStatus(_message.Message):
    __slots__ = ("id", "host", "uid", "pid", "started_ns", "expires_ns")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_NS_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    uid: int
    pid: int
    started_ns: int
    expires_ns: int
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., uid: _Optional[int] = ..., pid: _Optional[int] = ..., started_ns: _Optional[int] = ..., expires_ns: _Optional[int] = ...) -> None: ...

class ConsumerStatus(_message.Message):
    __slots__ = ("name", "position", "lag", "idle_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    position: int
    lag: int
    idle_seconds: float
    def __init__(self, name: _Optional[str] = ..., position: _Optional[int] = ..., lag: _Optional[int] = ..., idle_seconds: _Optional[float] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("name", "ok", "detail", "seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    seconds: float
    def __init__(self, name: _Optional[str] = ..., ok: bool = ..., detail: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("version", "host", "pid", "started_ns", "engine", "database", "blocks", "changelog_head", "live_sessions", "sessions", "consumers", "checks")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CHANGELOG_HEAD_FIELD_NUMBER: _ClassVar[int]
    LIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    version: str
    host: str
    pid: int
    started_ns: int
    engine: str
    database: str
    blocks: str
    changelog_head: int
    live_sessions: int
    sessions: _containers.RepeatedCompositeFieldContainer[SessionStatus]
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerStatus]
    checks: _containers.RepeatedCompositeFieldContainer[HealthCheck]
    def __init__(self, version: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., started_ns: _Optional[int] = ..., engine: _Optional[str] = ..., database: _Optional[str] = ..., blocks: _Optional[str] = ..., changelog_head: _Optional[int] = ..., live_sessions: _Optional[int] = ..., sessions: _Optional[_Iterable[_Union[SessionStatus, _Mapping]]] = ..., consumers: _Optional[_Iterable[_Union[ConsumerStatus, _Mapping]]] = ..., checks: _Optional[_Iterable[_Union[HealthCheck, _Mapping]]] = ...) -> None: ...

class CallFrame(_message.Message):
    __slots__ = ("method", "request", "request_id", "attempt")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    method: str
    request: bytes
    request_id: str
    attempt: int
    def __init__(self, method: _Optional[str] = ..., request: _Optional[bytes] = ..., request_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class ReplyFrame(_message.Message):
    __slots__ = ("reply", "error")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reply: bytes
    error: ErrorDetail
    def __init__(self, reply: _Optional[bytes] = ..., error: _Optional[_Union[ErrorDetail, _Mapping]] = ...) -> None: ...
