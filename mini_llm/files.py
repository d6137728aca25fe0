"""Writing files so that a crash never leaves half of one: the one atomic writer.

    atomic_write(path, data)        data: bytes, str (UTF-8), or a function write(binary_file)

The bytes go to a temporary file in the same folder (a rename is atomic only within one file
system), are flushed to the disk (fsync), and the temporary file is renamed onto `path`. A
reader sees the old file or the new one, never a mix. The file gets the ordinary mode of a new
file (0666 minus the umask, usually 0644), not the 0600 of a temporary file.

    fsync_dir(folder)               make the renames inside a folder durable
    check_writable_dir(folder, what) create `folder` if needed and prove it writable, or
                                    raise OutputError naming the path and the OS's reason
"""
import os
import tempfile


class OutputError(OSError):
    """A file or folder that cannot be written; the message is one line naming the path."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data):
    """Write `data` to `path` atomically (see the module docstring). Returns path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def fsync_dir(folder):
    """Flush a folder's entries (its renames) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_os_error(e):
    """`PATH: reason` for an OSError (the reason as the OS words it)."""
    name = e.filename if e.filename is not None else ""
    reason = e.strerror or str(e)
    return f"{name}: {reason}" if name else reason


def check_writable_dir(folder, what="output_dir"):
    """Create `folder` (and its parents) if needed and write-then-remove a probe file in it, so
    that a file in the way, a read-only folder or a full disk fails now, in one line."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{what} {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write_test.{os.getpid()}")   # one per process (MPI ranks)
        atomic_write(probe, b"ok")
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {folder} cannot be written ({describe_os_error(e)})") from None
