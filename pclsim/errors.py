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
