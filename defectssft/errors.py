"""Errors a user can cause: each carries one line that names the thing and what to do."""


class DefectssftError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2, no traceback."""


class ProjectError(DefectssftError):
    """A project folder that is missing, not a project, or from a newer version."""


class ConfigError(DefectssftError):
    """A training/export configuration value that is missing, unknown or out of range."""


class ModelFileError(DefectssftError):
    """A model file that is missing, corrupt, or not a defectssft model."""
