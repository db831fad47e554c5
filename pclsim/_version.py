"""The package version, in one place (pyproject.toml states the same number for the installer)."""

__version__ = "0.4.0"


def versions() -> dict[str, str]:
    """{'pclsim': '0.3.1', 'torch': '2.14.1', 'timm': '1.0.x'} of this process: the versions a feature key and a
    results part record (pclsim.results.provenance). From the installed distributions (no import of torch);
    a library that is not installed is left out."""
    from importlib import metadata

    out = {"pclsim": __version__}
    for lib in ("torch", "timm"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out
