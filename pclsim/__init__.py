"""pclsim: a simulator for continual visual anomaly detection (PatchCore / PatchCoreCL)."""

__version__ = "0.1.0"
