"""Compatibility alias of :mod:`metafs.posix`, where the permission rules live."""

from ..posix import (ROOT, Cred, R, W, X, access_mask_to_want, allowed, check,  # noqa: F401
                     check_sticky, is_owner)
