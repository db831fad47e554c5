"""User-facing errors: the CLI turns each into one `error:` line and exit code 2."""


class PclsimError(Exception):
    """Bad input from the user (a file, a key, a value). The message names what is at fault."""


class ScenarioError(PclsimError):
    """The scenario YAML is malformed or asks for something that does not exist."""


class DataError(PclsimError):
    """A data set folder or image is missing, empty, corrupt or inconsistent."""


class ModelError(PclsimError):
    """A backbone, weights file or feature layer cannot be used."""


class Interrupted(PclsimError):
    """The sweep was stopped (Ctrl-C) before every trial finished: exit code 130, no summary written."""

    exit_code = 130


class FinishError(PclsimError):
    """The trials finished but the summary, statistics or printed table could not be computed: the trial
    results stay, and rerunning the same command redoes only this finish. Exit code 1 (a fault of pclsim,
    not of the input)."""

    exit_code = 1


# errno values of a file system that refuses to store: full, quota, read-only, no permission
FILE_SYSTEM_ERRNOS = {28: "no space left on device", 122: "disk quota exceeded", 30: "read-only file system",
                      13: "permission denied", 1: "operation not permitted"}


def file_system_error(e: BaseException, where=None) -> PclsimError | None:
    """A PclsimError naming the path and the cause for an OSError of a full, read-only or forbidden file
    system (also when a library wrapped the errno only into its message, as pyarrow does); None otherwise.
    where: the path to name when the error carries none."""
    import re

    if not isinstance(e, OSError):
        return None
    code = e.errno
    if code not in FILE_SYSTEM_ERRNOS:
        m = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)
        code = int(m.group(1)) if m else None
    if code not in FILE_SYSTEM_ERRNOS:
        return None
    path = e.filename or where or "the output folder"
    return PclsimError(f"{path}: cannot write: {FILE_SYSTEM_ERRNOS[code]} (errno {code}); what was written before "
                       "stays valid: free space or fix the permissions (or choose another --out), then rerun the "
                       "same command to resume")
